//! Replicated storage for the tests: private s3s-fs servers, one per endpoint, that a test may
//! kill, restart and corrupt; the `[storage]` naming them; and the checks that read each
//! endpoint's copies with `object_store` directly, never through Sluice's replicated reads.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use sluice_config::{Config, EndpointConfig};
use sluice_testkit::exactly_once::{self, Committed, Objects, Produced};

use crate::private::PrivateS3;
use crate::{load_config, s3_secret_file, Prepared, Stack};

/// Endpoint names, in order: `a`, `b`, `c`, ...
pub const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// The storage endpoints of one test: a private S3 server each.
pub struct Endpoints {
    pub servers: Vec<PrivateS3>,
    pub prefix: String,
}

impl Endpoints {
    /// Starts `n` servers, each with the shared stack's bucket and credentials.
    pub async fn launch(n: usize, prefix: &str) -> Result<Endpoints> {
        let mut servers = Vec::new();
        for _ in 0..n {
            servers.push(PrivateS3::launch().await?);
        }
        Ok(Endpoints {
            servers,
            prefix: prefix.to_string(),
        })
    }

    pub fn server(&mut self, name: &str) -> &mut PrivateS3 {
        let i = index(name);
        &mut self.servers[i]
    }

    /// Where endpoint `name` keeps the object `rel` on disk.
    pub fn file(&self, name: &str, rel: &str) -> PathBuf {
        let stack = Stack::from_env();
        self.servers[index(name)]
            .dir()
            .join("s3")
            .join(&stack.s3_bucket)
            .join(&self.prefix)
            .join(rel)
    }

    /// The `[storage]` section: every endpoint, the write quorum, and repair settings fast
    /// enough for a test (the secret key read from the file [`crate::write_config`] writes).
    pub fn storage_toml(
        &self,
        dir: &std::path::Path,
        quorum: usize,
        repair_ms: u64,
    ) -> Result<String> {
        let stack = Stack::from_env();
        let secret = s3_secret_file(dir);
        std::fs::write(&secret, &stack.s3_secret_key)?;
        let mut text = format!(
            "[storage]\nwrite_quorum = {quorum}\n[storage.repair]\ninterval_ms = {repair_ms}\nscrub_bytes_per_s = 104857600\nstraggler_wait_ms = 500\n"
        );
        for (name, s3) in NAMES.iter().zip(&self.servers) {
            text.push_str(&format!(
                "[[storage.endpoints]]\nname = \"{name}\"\nurl = \"s3://{}/{}\"\n[storage.endpoints.options]\naws_endpoint = \"{}\"\naws_access_key_id = \"{}\"\naws_secret_access_key = {{ file = {:?} }}\naws_region = \"us-east-1\"\naws_allow_http = \"true\"\naws_virtual_hosted_style_request = \"false\"\n",
                stack.s3_bucket,
                self.prefix,
                s3.endpoint(),
                stack.s3_access_key,
                secret.display().to_string()
            ));
        }
        Ok(text)
    }
}

fn index(name: &str) -> usize {
    NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
}

/// Replaces a deployment's `[storage]` section (written for S3) by `storage`.
pub fn set_storage(d: &Prepared, storage: &str) -> Result<()> {
    d.edit_config(|text| {
        let start = text
            .find("[storage]")
            .expect("the config has a [storage] section");
        let end = text[start..]
            .find("\n[[table]]")
            .map_or(text.len(), |i| start + i);
        format!("{}{storage}{}", &text[..start], &text[end..])
    })?;
    load_config(&d.config).map(drop)
}

/// The objects of one endpoint, read with `object_store` itself.
pub fn raw_objects(endpoint: &EndpointConfig) -> Result<Objects> {
    if let Some(dir) = endpoint.url.strip_prefix("file://") {
        // A deployment that never wrote a part has no directory yet: it holds nothing.
        std::fs::create_dir_all(dir)?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        return Ok(Objects::new(Arc::new(store), Path::default()));
    }
    let rest = endpoint
        .url
        .strip_prefix("s3://")
        .context("a test endpoint is file:// or s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in &endpoint.options {
        builder = builder.with_config(key.parse::<AmazonS3ConfigKey>()?, value.expose());
    }
    let store: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
    Ok(Objects::new(store, Path::from(prefix)))
}

/// The exactly-once check (every column of every row, the offsets, no stray object) run on
/// each endpoint's copies on their own: every endpoint holds every committed part, each
/// matching its checksum, and nothing else.
pub async fn verify_every_endpoint(d: &Prepared) -> Result<()> {
    let config: Config = load_config(&d.config)?;
    let tables: Vec<String> = config.tables.iter().map(|t| t.name.clone()).collect();
    let coord = sluice_worker::open_coordinator(&config.coordination).await?;
    let mut outcome = Ok(());
    for endpoint in config.storage.endpoint_list() {
        let objects = raw_objects(&endpoint)?;
        let checked = async {
            let committed = Committed::read(&*coord, &objects, &d.topic, &tables).await?;
            exactly_once::verify(
                &committed,
                &objects,
                Produced {
                    events: &d.events,
                    located: &d.located,
                    backfilled: None,
                },
            )
            .await
        };
        if let Err(e) = checked.await {
            outcome = Err(e.context(format!("on endpoint {}", endpoint.name)));
            break;
        }
    }
    coord.close().await?;
    outcome
}
