//! The resource types the test API server serves, as discovery lists them.

/// One served resource type (a REST collection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// REST collection name (`services`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// How `status` is written (see [`StatusPolicy`]).
    pub status: StatusPolicy,
}

/// How a kind's `status` is written, as kube-apiserver's strategies do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPolicy {
    /// No status subresource: `status` is an ordinary field.
    Plain,
    /// `/status` subresource; create clears `status`, updates of the main
    /// resource keep the stored one (Service, Pod, Namespace).
    ClearOnCreate,
    /// `/status` subresource; create keeps `status` (the kubelet registers a
    /// Node with its addresses), updates of the main resource keep the stored one.
    KeepOnCreate,
}

impl ResourceType {
    /// `apiVersion` of the objects (`v1`, `discovery.k8s.io/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `endpointslices.discovery.k8s.io`, as Status details and
    /// messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: StatusPolicy,
) -> ResourceType {
    ResourceType {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        status,
    }
}

/// Every served resource type. Indexes into this table identify a type in
/// the store.
pub const RESOURCES: &[ResourceType] = &[
    core(
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        StatusPolicy::ClearOnCreate,
    ),
    core(
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        StatusPolicy::KeepOnCreate,
    ),
    core(
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        StatusPolicy::ClearOnCreate,
    ),
    core(
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        StatusPolicy::Plain,
    ),
    core(
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        StatusPolicy::ClearOnCreate,
    ),
    core(
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        StatusPolicy::Plain,
    ),
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        status: StatusPolicy::Plain,
    },
    // What deploy/ declares, so that `kubectl apply -f deploy/` is checked
    // against the typed schemas too.
    core(
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        StatusPolicy::Plain,
    ),
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        status: StatusPolicy::ClearOnCreate,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
        status: StatusPolicy::Plain,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        status: StatusPolicy::Plain,
    },
];

/// Index of the Namespace type in [`RESOURCES`].
pub const NAMESPACES: usize = 0;
/// Index of the Node type in [`RESOURCES`].
pub const NODES: usize = 1;
/// Index of the Service type in [`RESOURCES`].
pub const SERVICES: usize = 2;
/// Index of the EndpointSlice type in [`RESOURCES`].
pub const ENDPOINT_SLICES: usize = 6;

/// Finds a resource type by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource type by `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// The API groups other than core, in discovery order.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !g.contains(&r.group) {
            g.push(r.group);
        }
    }
    g
}
