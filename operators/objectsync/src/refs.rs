//! Which objects an edge node needs (KubeEdge's rule), read from the objects that bind to it:
//! a pod needs the ConfigMaps and Secrets it references; a Device needs its DeviceModel.

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, PodSpec};

/// The kinds of object this operator delivers, with their apiVersion and KubeEdge's kind name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    ConfigMap,
    Secret,
    Device,
    DeviceModel,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Device,
        Kind::DeviceModel,
    ];

    /// `spec.objectKind` of a sync (KubeEdge writes the Kubernetes kind).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Device => "Device",
            Kind::DeviceModel => "DeviceModel",
        }
    }

    /// `spec.objectAPIVersion` of a sync.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::ConfigMap | Kind::Secret => "v1",
            Kind::Device | Kind::DeviceModel => "devices.kubeedge.io/v1beta1",
        }
    }

    /// Parses `spec.objectKind`, case-insensitively (older KubeEdge releases wrote lower case).
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(kind))
    }
}

/// A ConfigMap or Secret a pod references, by name in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ref {
    pub kind: Kind,
    pub name: String,
}

impl Ref {
    fn configmap(name: &str) -> Self {
        Ref {
            kind: Kind::ConfigMap,
            name: name.to_owned(),
        }
    }
    fn secret(name: &str) -> Self {
        Ref {
            kind: Kind::Secret,
            name: name.to_owned(),
        }
    }
}

/// Every ConfigMap and Secret `spec` references — volumes (configMap, secret, projected
/// sources), env `valueFrom`, `envFrom` of every container (init and ephemeral ones too) and
/// `imagePullSecrets` — sorted, without duplicates or empty names.
pub fn pod_references(spec: &PodSpec) -> Vec<Ref> {
    let mut out = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.config_map.as_ref().map(|c| c.name.as_str()) {
            out.push(Ref::configmap(name));
        }
        if let Some(name) = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
        {
            out.push(Ref::secret(name));
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            if let Some(c) = &source.config_map {
                out.push(Ref::configmap(&c.name));
            }
            if let Some(s) = &source.secret {
                out.push(Ref::secret(&s.name));
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        container_references(c.env.as_deref(), c.env_from.as_deref(), &mut out);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        container_references(c.env.as_deref(), c.env_from.as_deref(), &mut out);
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        out.push(Ref::secret(&s.name));
    }
    out.retain(|r| !r.name.is_empty());
    out.sort();
    out.dedup();
    out
}

fn container_references(
    env: Option<&[EnvVar]>,
    env_from: Option<&[EnvFromSource]>,
    out: &mut Vec<Ref>,
) {
    for var in env.into_iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(c) = &from.config_map_key_ref {
            out.push(Ref::configmap(&c.name));
        }
        if let Some(s) = &from.secret_key_ref {
            out.push(Ref::secret(&s.name));
        }
    }
    for source in env_from.into_iter().flatten() {
        if let Some(c) = &source.config_map_ref {
            out.push(Ref::configmap(&c.name));
        }
        if let Some(s) = &source.secret_ref {
            out.push(Ref::secret(&s.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    fn names(refs: &[Ref]) -> Vec<(Kind, &str)> {
        refs.iter().map(|r| (r.kind, r.name.as_str())).collect()
    }

    #[test]
    fn every_kind_of_reference_is_found() {
        let s = spec(json!({
            "containers": [{
                "name": "app",
                "env": [
                    {"name": "A", "value": "plain"},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                    {"name": "C", "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "k"}}},
                    {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "envFrom": [{"configMapRef": {"name": "cm-envfrom"}}, {"secretRef": {"name": "sec-envfrom"}}]
            }],
            "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "cm-init"}}]}],
            "ephemeralContainers": [{"name": "debug", "envFrom": [{"secretRef": {"name": "sec-debug"}}]}],
            "imagePullSecrets": [{"name": "pull"}, {"name": ""}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "cm-vol"}},
                {"name": "v2", "secret": {"secretName": "sec-vol"}},
                {"name": "v3", "projected": {"sources": [
                    {"configMap": {"name": "cm-proj"}},
                    {"secret": {"name": "sec-proj"}},
                    {"serviceAccountToken": {"path": "token"}}
                ]}},
                {"name": "v4", "emptyDir": {}}
            ]
        }));
        assert_eq!(
            names(&pod_references(&s)),
            [
                (Kind::ConfigMap, "cm-env"),
                (Kind::ConfigMap, "cm-envfrom"),
                (Kind::ConfigMap, "cm-init"),
                (Kind::ConfigMap, "cm-proj"),
                (Kind::ConfigMap, "cm-vol"),
                (Kind::Secret, "pull"),
                (Kind::Secret, "sec-debug"),
                (Kind::Secret, "sec-env"),
                (Kind::Secret, "sec-envfrom"),
                (Kind::Secret, "sec-proj"),
                (Kind::Secret, "sec-vol"),
            ]
        );
    }

    #[test]
    fn duplicates_collapse_and_a_bare_pod_needs_nothing() {
        let s = spec(json!({
            "containers": [
                {"name": "a", "envFrom": [{"configMapRef": {"name": "shared"}}]},
                {"name": "b", "envFrom": [{"configMapRef": {"name": "shared"}}]}
            ],
            "volumes": [{"name": "v", "configMap": {"name": "shared"}}]
        }));
        assert_eq!(names(&pod_references(&s)), [(Kind::ConfigMap, "shared")]);
        assert!(pod_references(&spec(json!({"containers": [{"name": "a"}]}))).is_empty());
    }

    #[test]
    fn kinds_parse_case_insensitively() {
        assert_eq!(Kind::parse("Pod"), Some(Kind::Pod));
        assert_eq!(Kind::parse("configmap"), Some(Kind::ConfigMap));
        assert_eq!(Kind::parse("DEVICEMODEL"), Some(Kind::DeviceModel));
        assert_eq!(Kind::parse("Service"), None);
        assert_eq!(Kind::parse(""), None);
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }
}
