//! A small cluster that changes at random (with a fixed seed), for tests that hold the
//! incremental paths to what a fresh build gives. Addresses come from small pools, so that
//! services share frontends (conflicts) and backends, and endpoints move between them.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{NodeInfo, Snapshot};

pub struct RandomWorld {
    rng: StdRng,
    services: BTreeMap<String, Arc<Service>>,
    slices: BTreeMap<String, Arc<EndpointSlice>>,
    node: NodeInfo,
}

const SERVICE_NAMES: usize = 12;

impl RandomWorld {
    pub fn new(seed: u64) -> Self {
        let mut world = Self {
            rng: StdRng::seed_from_u64(seed),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            node: NodeInfo {
                name: Some("node-a".into()),
                zone: Some("zone-a".into()),
                nodeport_addresses: vec!["198.18.0.1".parse().expect("ip")],
            },
        };
        for _ in 0..SERVICE_NAMES {
            world.step();
        }
        world
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.values().cloned().collect(),
            endpoint_slices: self.slices.values().cloned().collect(),
            node: self.node.clone(),
            ..Snapshot::default()
        }
    }

    /// One random change, described for failure messages.
    pub fn step(&mut self) -> String {
        let service = format!("svc-{}", self.rng.random_range(0..SERVICE_NAMES));
        match self.rng.random_range(0..100) {
            0..35 => {
                let slice = format!("{service}-{}", self.rng.random_range(0..2));
                let value = self.random_slice(&service, &slice);
                self.slices.insert(slice.clone(), Arc::new(value));
                format!("slice {slice} written")
            }
            35..60 => {
                let value = self.random_service(&service);
                self.services.insert(service.clone(), Arc::new(value));
                format!("service {service} written")
            }
            60..70 => {
                self.services.remove(&service);
                format!("service {service} deleted")
            }
            70..78 => {
                let slice = format!("{service}-{}", self.rng.random_range(0..2));
                self.slices.remove(&slice);
                format!("slice {slice} deleted")
            }
            78..90 => {
                // A reload that parses every object again: new pointers, equal values.
                for object in self.services.values_mut() {
                    *object = Arc::new((**object).clone());
                }
                for object in self.slices.values_mut() {
                    *object = Arc::new((**object).clone());
                }
                "every object re-read unchanged".into()
            }
            90..95 => {
                self.node.name = Some(format!("node-{}", self.rng.random_range(0..2)));
                format!("node renamed {:?}", self.node.name)
            }
            _ => {
                self.node.zone = Some(format!("zone-{}", self.rng.random_range(0..2)));
                format!("node zone {:?}", self.node.zone)
            }
        }
    }

    fn random_service(&mut self, name: &str) -> Service {
        let cluster_ip = format!("198.18.100.{}", self.rng.random_range(1..8));
        let kind = if self.rng.random_bool(0.3) {
            "NodePort"
        } else {
            "ClusterIP"
        };
        let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP"})];
        if self.rng.random_bool(0.4) {
            ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP"}));
        }
        if kind == "NodePort" {
            ports[0]["nodePort"] = json!(30_000 + self.rng.random_range(0..3));
        }
        let external: Vec<String> = (0..self.rng.random_range(0..2))
            .map(|_| format!("198.18.200.{}", self.rng.random_range(1..4)))
            .collect();
        let policy = if self.rng.random_bool(0.3) {
            "Local"
        } else {
            "Cluster"
        };
        let mut spec = json!({
            "type": kind,
            "clusterIP": cluster_ip,
            "ports": ports,
            "externalIPs": external,
            "internalTrafficPolicy": policy,
        });
        if kind == "NodePort" {
            spec["externalTrafficPolicy"] = json!(policy);
        }
        if kind == "NodePort" && policy == "Local" {
            // What a cloud's LoadBalancer with the Local policy looks like to the model: a
            // NodePort service with a health check port (no extra draw: seeds keep their worlds).
            let index: i32 = name.trim_start_matches("svc-").parse().expect("svc-N");
            spec["type"] = json!("LoadBalancer");
            spec["healthCheckNodePort"] = json!(32_000 + index);
        }
        if self.rng.random_bool(0.2) {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .expect("random Service")
    }

    fn random_slice(&mut self, service: &str, name: &str) -> EndpointSlice {
        let own_base = 10
            * service
                .trim_start_matches("svc-")
                .parse::<u32>()
                .expect("svc-N")
            + 1;
        let endpoints: Vec<serde_json::Value> = (0..self.rng.random_range(0..5))
            .map(|_| {
                // Mostly the service's own addresses, sometimes one another service may use.
                let address = if self.rng.random_bool(0.8) {
                    format!("198.18.2.{}", own_base + self.rng.random_range(0..6))
                } else {
                    format!("198.18.1.{}", self.rng.random_range(1..6))
                };
                json!({
                    "addresses": [address],
                    "nodeName": format!("node-{}", self.rng.random_range(0..2)),
                    "zone": format!("zone-{}", self.rng.random_range(0..2)),
                    "conditions": {
                        "ready": self.rng.random_bool(0.8),
                        "serving": self.rng.random_bool(0.8),
                        "terminating": self.rng.random_bool(0.2),
                    },
                })
            })
            .collect();
        let mut ports = vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})];
        if self.rng.random_bool(0.5) {
            ports.push(json!({"name": "dns", "port": 5353, "protocol": "UDP"}));
        }
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .expect("random EndpointSlice")
    }
}
