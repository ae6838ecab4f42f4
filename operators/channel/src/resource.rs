//! Resource strings `<namespace>/<type>/<name>` (KubeEdge's `route.resource`).
//!
//! Cluster-scoped resources have an empty namespace (`/node/edge-1`). Parsing refuses anything
//! that is not exactly three parts with a known type and valid Kubernetes names, so a forged or
//! malformed route never reaches an API call.

use std::fmt;
use std::str::FromStr;

/// The kinds that travel on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Pod,
    ConfigMap,
    Secret,
    Device,
    DeviceModel,
    /// edge → cloud: register the session's own Node.
    Node,
    /// edge → cloud: the session's own node status (keeps the Node Ready and its Lease renewed).
    NodeStatus,
}

impl ResourceType {
    pub const ALL: [ResourceType; 7] = [
        ResourceType::Pod,
        ResourceType::ConfigMap,
        ResourceType::Secret,
        ResourceType::Device,
        ResourceType::DeviceModel,
        ResourceType::Node,
        ResourceType::NodeStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Pod => "pod",
            ResourceType::ConfigMap => "configmap",
            ResourceType::Secret => "secret",
            ResourceType::Device => "device",
            ResourceType::DeviceModel => "devicemodel",
            ResourceType::Node => "node",
            ResourceType::NodeStatus => "nodestatus",
        }
    }

    /// The resource type of an object kind delivered cloud → edge (ObjectSync `spec.objectKind`).
    pub fn of_kind(kind: &str) -> Option<ResourceType> {
        match kind {
            "Pod" => Some(ResourceType::Pod),
            "ConfigMap" => Some(ResourceType::ConfigMap),
            "Secret" => Some(ResourceType::Secret),
            "Device" => Some(ResourceType::Device),
            "DeviceModel" => Some(ResourceType::DeviceModel),
            _ => None,
        }
    }

    /// The Kubernetes kind stored for a delivered type (`None` for edge → cloud reports).
    pub fn kind(self) -> Option<&'static str> {
        match self {
            ResourceType::Pod => Some("Pod"),
            ResourceType::ConfigMap => Some("ConfigMap"),
            ResourceType::Secret => Some("Secret"),
            ResourceType::Device => Some("Device"),
            ResourceType::DeviceModel => Some("DeviceModel"),
            _ => None,
        }
    }

    /// The plural the agent's local read-only API serves it under (Kubernetes URL shape).
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Pod => "pods",
            ResourceType::ConfigMap => "configmaps",
            ResourceType::Secret => "secrets",
            ResourceType::Device => "devices",
            ResourceType::DeviceModel => "devicemodels",
            ResourceType::Node => "nodes",
            ResourceType::NodeStatus => "nodestatuses",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceType {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ResourceError::UnknownType(s.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// Empty for cluster-scoped resources.
    pub namespace: String,
    pub type_: ResourceType,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("resource {0:?} is not <namespace>/<type>/<name>")]
    Shape(String),
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    #[error("{0:?} is not a valid Kubernetes name")]
    InvalidName(String),
}

impl Resource {
    pub fn new(namespace: &str, type_: ResourceType, name: &str) -> Self {
        Resource {
            namespace: namespace.to_string(),
            type_,
            name: name.to_string(),
        }
    }

    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.type_, self.name)
    }
}

/// DNS-1123 subdomain (names of objects and nodes): lower-case alphanumerics, '-' and '.',
/// at most 253 characters, alphanumeric at both ends.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

impl FromStr for Resource {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        let (Some(namespace), Some(type_), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ResourceError::Shape(s.to_string()));
        };
        let type_ = type_.parse()?;
        if !namespace.is_empty() && !is_valid_name(namespace) {
            return Err(ResourceError::InvalidName(namespace.to_string()));
        }
        if !is_valid_name(name) {
            return Err(ResourceError::InvalidName(name.to_string()));
        }
        Ok(Resource {
            namespace: namespace.to_string(),
            type_,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "default/configmap/toll-config",
            "/node/edge-0001",
            "plant-7/device/thermo.1",
        ] {
            assert_eq!(s.parse::<Resource>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_malformed_and_forged_routes() {
        assert_eq!(
            "default/configmap".parse::<Resource>(),
            Err(ResourceError::Shape("default/configmap".into()))
        );
        assert_eq!(
            "a/b/c/d".parse::<Resource>(),
            Err(ResourceError::Shape("a/b/c/d".into()))
        );
        assert_eq!(
            "default/deployment/x".parse::<Resource>(),
            Err(ResourceError::UnknownType("deployment".into()))
        );
        assert_eq!(
            "default/pod/../../etc".parse::<Resource>(),
            Err(ResourceError::Shape("default/pod/../../etc".into()))
        );
        assert_eq!(
            "default/pod/UPPER".parse::<Resource>(),
            Err(ResourceError::InvalidName("UPPER".into()))
        );
        assert_eq!(
            "default/pod/".parse::<Resource>(),
            Err(ResourceError::InvalidName(String::new()))
        );
        assert_eq!(
            "Bad_NS/pod/x".parse::<Resource>(),
            Err(ResourceError::InvalidName("Bad_NS".into()))
        );
    }

    #[test]
    fn kinds_map_both_ways() {
        for t in ResourceType::ALL {
            if let Some(kind) = t.kind() {
                assert_eq!(ResourceType::of_kind(kind), Some(t));
            }
        }
        assert_eq!(ResourceType::of_kind("Deployment"), None);
    }
}
