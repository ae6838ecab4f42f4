//! The client, built the way kubectl does: `--kubeconfig` or `$KUBECONFIG` (several files
//! merged) or `~/.kube/config`, `--context`, and the context's namespace unless `-n` is given;
//! in a pod, the in-cluster configuration.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::Global;
use crate::error::{Error, Request, Result, chain};

/// Everything a command needs to talk to the cluster.
pub struct Ctx {
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    /// Whether `-n` was given (`sync` and `hub` default to all namespaces without it).
    pub namespace_given: bool,
    /// The API server URL, for error messages.
    pub server: String,
}

impl Ctx {
    pub async fn new(global: &Global) -> Result<Self> {
        let options = KubeConfigOptions {
            context: global.context.clone(),
            ..Default::default()
        };
        let config = match &global.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| Error::Config(chain(&e)))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| Error::Config(chain(&e)))?
            }
            None => match Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                // No kubeconfig at all: in a pod, use the ServiceAccount (as kubectl does).
                Err(kc_err) if global.context.is_none() => {
                    Config::incluster().map_err(|_| Error::Config(chain(&kc_err)))?
                }
                Err(e) => return Err(Error::Config(chain(&e))),
            },
        };
        let server = config.cluster_url.to_string();
        let namespace_given = global.namespace.is_some();
        let namespace = global
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| Error::Connect {
            server: server.clone(),
            detail: chain(&e),
        })?;
        Ok(Self {
            client,
            namespace,
            namespace_given,
            server,
        })
    }

    /// The request description for error messages.
    pub fn request<'a>(
        &'a self,
        verb: &'a str,
        resource: &'a str,
        singular: &'a str,
        name: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            verb,
            resource,
            singular,
            name,
            namespace,
            server: &self.server,
        }
    }

    /// `Some(namespace)` when `-n` was given, `None` for all namespaces.
    pub fn scope(&self) -> Option<&str> {
        self.namespace_given.then_some(self.namespace.as_str())
    }
}
