//! `[[storage.endpoints]]`, the replication factor and the write quorum.

use super::*;

fn endpoint(name: &str, dir: &str) -> String {
    format!("[[storage.endpoints]]\nname = \"{name}\"\nurl = \"file:///tmp/{dir}\"\n")
}

/// [`minimal`] with `[storage]` holding `top` and then the endpoints `a`, `b`, `c`.
fn replicated(top: &str, endpoints: &str) -> String {
    format!("{}\n[storage]\n{top}\n{endpoints}", minimal())
}

fn three() -> String {
    [("a", "a"), ("b", "b"), ("c", "c")]
        .iter()
        .map(|(n, d)| endpoint(n, d))
        .collect()
}

#[test]
fn three_endpoints_default_to_replication_three_and_a_majority_quorum() {
    let c = Config::from_toml_str(&replicated("", &three()), "t").unwrap();
    let r = c.storage.replication();
    assert_eq!((r.factor, r.quorum), (3, 2));
    assert_eq!(c.storage.endpoint_list().len(), 3);
    assert_eq!(c.storage.repair, RepairConfig::default());
    // One URL is one endpoint, replication 1.
    let one = Config::from_toml_str(&minimal(), "t").unwrap();
    assert_eq!(one.storage.endpoint_list()[0].name, "default");
    let r = one.storage.replication();
    assert_eq!((r.factor, r.quorum), (1, 1));
}

#[test]
fn a_quorum_above_the_factor_is_refused() {
    let e = err_of(&replicated(
        "replication_factor = 2\nwrite_quorum = 3",
        &three(),
    ));
    assert!(
        e.contains("storage.write_quorum") && e.contains("replication factor of 2"),
        "{e}"
    );
    let e = err_of(&replicated("replication_factor = 4", &three()));
    assert!(
        e.contains("storage.replication_factor") && e.contains("3 endpoints"),
        "{e}"
    );
    let e = err_of(&replicated("write_quorum = 0", &three()));
    assert!(e.contains("storage.write_quorum"), "{e}");
}

#[test]
fn endpoint_names_must_be_safe_and_distinct() {
    let e = err_of(&replicated("", &(endpoint("a", "x") + &endpoint("a", "y"))));
    assert!(
        e.contains("storage.endpoints[1].name") && e.contains("two endpoints"),
        "{e}"
    );
    let e = err_of(&replicated("", &endpoint("Node 1", "x")));
    assert!(e.contains("storage.endpoints[0].name"), "{e}");
    let e = err_of(&replicated("", &(endpoint("a", "x") + &endpoint("b", "x"))));
    assert!(e.contains("same url"), "{e}");
}

#[test]
fn a_url_beside_endpoints_is_refused() {
    let e = err_of(&replicated("url = \"file:///tmp/one\"", &three()));
    assert!(
        e.contains("storage.url") && e.contains("[[storage.endpoints]]"),
        "{e}"
    );
}

#[test]
fn an_endpoint_secret_written_inline_is_refused_without_quoting_it() {
    let text = replicated(
        "",
        "[[storage.endpoints]]\nname = \"a\"\nurl = \"s3://b/p\"\noptions = { aws_secret_access_key = \"canary-e1\" }\n",
    );
    let e = err_of(&text);
    assert!(
        e.contains("storage.endpoints[0].options.aws_secret_access_key"),
        "{e}"
    );
    assert!(!e.contains("canary"), "the error shows the secret: {e}");
}

#[test]
fn draining_endpoints_are_left_out_of_the_factor() {
    let text = replicated(
        "",
        &(endpoint("a", "a") + &endpoint("b", "b") + &endpoint("c", "c") + "drain = true\n"),
    );
    let c = Config::from_toml_str(&text, "t").unwrap();
    let r = c.storage.replication();
    assert_eq!((r.factor, r.quorum), (2, 2));
    let all = (endpoint("a", "a") + "drain = true\n") + &endpoint("b", "b") + "drain = true\n";
    let e = err_of(&replicated("", &all));
    assert!(e.contains("every endpoint is draining"), "{e}");
}

#[test]
fn a_repair_interval_of_zero_is_refused() {
    let e = err_of(&replicated("[storage.repair]\ninterval_ms = 0", &three()));
    assert!(e.contains("storage.repair.interval_ms"), "{e}");
}
