//! Every way a command can fail, each with the sentence a user needs to act on it.

use thiserror::Error;

/// What went wrong. The `Display` text is what the user reads after `Error: `.
#[derive(Debug, Error)]
pub enum Error {
    /// No kubeconfig could be read (or the in-cluster configuration is missing).
    #[error("no cluster configuration: {0} (set KUBECONFIG or pass --kubeconfig)")]
    Config(String),

    /// The API server could not be reached (refused, DNS, TLS).
    #[error("cannot reach the API server at {server}: {detail}")]
    Connect { server: String, detail: String },

    /// One named object is missing.
    #[error("{resource} \"{name}\" not found{}", in_namespace(namespace.as_deref()))]
    NotFound {
        resource: String,
        name: String,
        namespace: Option<String>,
    },

    /// The API server does not serve the resource at all (CRD not installed).
    #[error(
        "the API server does not serve {resource}: are the edgefleet CRDs installed? (helm install edgefleet-crds charts/edgefleet-crds)"
    )]
    NotServed { resource: String },

    /// RBAC said no.
    #[error(
        "forbidden: you may not {verb} {resource}{} ({message}). Ask a cluster admin for a Role or ClusterRole granting \"{verb}\" on {resource}; check with: kubectl auth can-i {verb} {resource}{}",
        in_namespace(namespace.as_deref()),
        namespace.as_deref().map(|n| format!(" -n {n}")).unwrap_or_else(|| " --all-namespaces".into())
    )]
    Forbidden {
        verb: String,
        resource: String,
        namespace: Option<String>,
        message: String,
    },

    /// The credentials were rejected.
    #[error(
        "unauthorized: the API server rejected the credentials ({0}); log in again or refresh the token"
    )]
    Unauthorized(String),

    /// The API server refused the request for another reason (e.g. a CEL rule).
    #[error("{verb} {resource}: {message}")]
    Api {
        verb: String,
        resource: String,
        message: String,
    },

    /// The object was deleted while being watched.
    #[error("{resource} \"{name}\" was deleted{}", in_namespace(namespace.as_deref()))]
    Deleted {
        resource: String,
        name: String,
        namespace: Option<String>,
    },

    /// `--timeout` ran out while watching.
    #[error("timed out after {0}s waiting for the rollout to finish")]
    Timeout(u64),

    /// A command-line value that cannot be used.
    #[error("{0}")]
    Usage(String),

    /// Writing the output failed (closed pipe...).
    #[error("writing output: {0}")]
    Output(String),
}

fn in_namespace(namespace: Option<&str>) -> String {
    namespace
        .map(|n| format!(" in namespace \"{n}\""))
        .unwrap_or_default()
}

/// What a request was doing, to turn a `kube::Error` into an [`Error`] that says so.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The RBAC verb: get, list, watch, patch.
    pub verb: &'a str,
    /// The resource as RBAC names it: `rolloutjobs.edgefleet.io`, `configmaps`.
    pub resource: &'a str,
    /// The singular name used in "not found": `rolloutjob`.
    pub singular: &'a str,
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
    /// The API server's URL, for connection errors.
    pub server: &'a str,
}

impl Request<'_> {
    /// Classifies a `kube::Error` from this request.
    pub fn error(&self, err: kube::Error) -> Error {
        match err {
            kube::Error::Api(status) => match status.code {
                404 => match self.name {
                    // A named object is missing only when the server says which one; a bare
                    // 404 means the resource type itself is not served.
                    Some(name) if status.details.as_ref().is_some_and(|d| !d.name.is_empty()) => {
                        Error::NotFound {
                            resource: self.singular.to_string(),
                            name: name.to_string(),
                            namespace: self.namespace.map(str::to_string),
                        }
                    }
                    _ => Error::NotServed {
                        resource: self.resource.to_string(),
                    },
                },
                403 => Error::Forbidden {
                    verb: self.verb.to_string(),
                    resource: self.resource.to_string(),
                    namespace: self.namespace.map(str::to_string),
                    message: status.message,
                },
                401 => Error::Unauthorized(status.message),
                _ => Error::Api {
                    verb: self.verb.to_string(),
                    resource: self.resource.to_string(),
                    message: status.message,
                },
            },
            kube::Error::SerdeError(e) => Error::Api {
                verb: self.verb.to_string(),
                resource: self.resource.to_string(),
                message: format!("unexpected response: {e}"),
            },
            other => Error::Connect {
                server: self.server.to_string(),
                detail: chain(&other),
            },
        }
    }
}

/// An error and its sources on one line (hyper's "connection refused" sits a few levels down).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    fn req() -> Request<'static> {
        Request {
            verb: "get",
            resource: "rolloutjobs.edgefleet.io",
            singular: "rolloutjob",
            name: Some("x"),
            namespace: Some("y"),
            server: "https://127.0.0.1:6443/",
        }
    }

    #[test]
    fn not_found_names_the_job_and_namespace() {
        let status = Status::failure("rolloutjobs.edgefleet.io \"x\" not found", "NotFound")
            .with_code(404)
            .with_details(StatusDetails {
                name: "x".into(),
                group: "edgefleet.io".into(),
                kind: "rolloutjobs".into(),
                uid: String::new(),
                causes: Vec::new(),
                retry_after_seconds: 0,
            });
        let e = req().error(kube::Error::Api(status.boxed()));
        assert_eq!(
            e.to_string(),
            "rolloutjob \"x\" not found in namespace \"y\""
        );
    }

    #[test]
    fn bare_404_is_a_missing_crd() {
        let status = Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404);
        let e = req().error(kube::Error::Api(status.boxed()));
        assert!(e.to_string().contains("CRDs installed"), "{e}");
    }

    #[test]
    fn forbidden_names_verb_resource_and_rbac() {
        let status = Status::failure("denied", "Forbidden").with_code(403);
        let e = req().error(kube::Error::Api(status.boxed())).to_string();
        assert!(
            e.starts_with("forbidden: you may not get rolloutjobs.edgefleet.io in namespace \"y\""),
            "{e}"
        );
        assert!(
            e.contains("kubectl auth can-i get rolloutjobs.edgefleet.io -n y"),
            "{e}"
        );
    }
}
