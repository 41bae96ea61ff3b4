//! ZooKeeper `digest` authentication and the ACL of Sluice's znodes.
//!
//! A session authenticates as `user:password`; ZooKeeper knows that identity as
//! `digest:user:base64(sha1(user:password))`. Every znode a deployment creates grants all rights
//! to its identity only, and reading to an optional read-only identity. With no credentials the
//! znodes are open to anyone (`world:anyone`), as they were before authentication existed.
//!
//! At connect the deployment root's ACL says what this session may do there: no reading means
//! the identity (or its password) is not the deployment's, which is reported at once with the
//! fix; reading only means a read-only identity (`sluice lag` run by others).

use base64::Engine as _;
use zookeeper_client as zk;

/// Who a deployment's sessions authenticate as, and who else may read. Its `Debug` shows the
/// user names only.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
    /// Name and password of the read-only identity, whose digest goes into every ACL.
    read_only: Option<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("read_only_user", &self.read_only.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(
        user: impl Into<String>,
        password: impl Into<String>,
        read_only: Option<(String, String)>,
    ) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
            read_only,
        }
    }

    /// The identity's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// What the `digest` scheme sends to authenticate.
    pub(super) fn auth(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }

    /// This identity as ACLs name it.
    pub(super) fn id(&self) -> String {
        digest_id(&self.user, &self.password)
    }

    /// The ACL of every znode this deployment creates.
    pub(super) fn acls(&self) -> Vec<zk::Acl> {
        let mut acls = vec![zk::Acl::new(
            zk::Permission::ALL,
            zk::AuthId::new("digest", &self.id()),
        )];
        if let Some((user, password)) = &self.read_only {
            acls.push(zk::Acl::new(
                zk::Permission::READ,
                zk::AuthId::new("digest", &digest_id(user, password)),
            ));
        }
        acls
    }
}

/// `user:base64(sha1(user:password))`, the form ZooKeeper's digest provider gives an identity.
fn digest_id(user: &str, password: &str) -> String {
    let hash = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{user}:{password}").as_bytes(),
    );
    format!(
        "{user}:{}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
}

/// What `acls` grant a session authenticated as `id` (a digest id), or an anonymous one.
/// ZooKeeper shows the hashes of digest identities only to sessions with ADMIN rights (to the
/// others as `user:x`); such an entry is matched by the user name, which is all there is to
/// compare.
pub(super) fn granted(acls: &[zk::Acl], id: Option<&str>) -> zk::Permission {
    let user = id.and_then(|i| i.split(':').next());
    acls.iter()
        .filter(|a| {
            let who = a.auth_id();
            match who.scheme() {
                "world" => who.id() == "anyone",
                "digest" => {
                    Some(who.id()) == id
                        || (who.id().ends_with(":x") && who.id().split(':').next() == user)
                }
                _ => false,
            }
        })
        .fold(zk::Permission::NONE, |p, a| p | a.permission())
}

/// Whether `acls` let anyone at all change what is under the node.
pub(super) fn open_to_anyone(acls: &[zk::Acl]) -> bool {
    let anyone = granted(acls, None);
    anyone.has(zk::Permission::WRITE)
        || anyone.has(zk::Permission::CREATE)
        || anyone.has(zk::Permission::DELETE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_id_is_zookeepers() {
        // Computed apart, with Python's hashlib and base64: the formula of ZooKeeper's
        // DigestAuthenticationProvider.generateDigest.
        assert_eq!(
            digest_id("super", "secret"),
            "super:lK75jTNcA+U9vtVEw5vB51mj/w4="
        );
    }

    #[test]
    fn what_an_acl_grants() {
        let c = Credentials::new("sluice", "pw", Some(("viewer".into(), "vpw".into())));
        let acls = c.acls();
        assert_eq!(granted(&acls, Some(&c.id())), zk::Permission::ALL);
        let viewer = digest_id("viewer", "vpw");
        assert_eq!(granted(&acls, Some(&viewer)), zk::Permission::READ);
        assert_eq!(
            granted(&acls, Some(&digest_id("sluice", "wrong"))),
            zk::Permission::NONE
        );
        assert_eq!(granted(&acls, None), zk::Permission::NONE);
        // As a session without ADMIN rights reads them.
        let masked = [
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", "sluice:x")),
            zk::Acl::new(zk::Permission::READ, zk::AuthId::new("digest", "viewer:x")),
        ];
        assert_eq!(granted(&masked, Some(&viewer)), zk::Permission::READ);
        assert!(!open_to_anyone(&acls));
        assert!(open_to_anyone(&zk::Acls::anyone_all()));
        assert!(!format!("{c:?}").contains("pw"));
    }
}
