//! The read-only inspection service (`flatnet.v1.Inspect`): converts the store's records into
//! proto messages for flatnetctl, grpcurl and the gateway.

use crate::engine::Engine;
use crate::ipam::{self, Store};
use crate::netlink::Netlink;
use flatnet_proto::v1;
use std::sync::Arc;

pub struct InspectService<N, S> {
    engine: Arc<Engine<N, S>>,
}

impl<N, S> InspectService<N, S> {
    pub fn new(engine: Arc<Engine<N, S>>) -> Self {
        InspectService { engine }
    }
}

/// Whether `a` is the container a user named: its full id, an id prefix, or its name.
pub fn matches_container(a: &ipam::Allocation, wanted: &str) -> bool {
    wanted.is_empty()
        || a.container_id.starts_with(wanted)
        || a.container_name.as_deref() == Some(wanted)
}

fn to_proto(a: ipam::Allocation) -> v1::Allocation {
    v1::Allocation {
        address: format!("{}/{}", a.address, a.prefix),
        network: a.network,
        container_id: a.container_id,
        ifname: a.ifname,
        container_name: a.container_name.unwrap_or_default(),
        host_veth: a.host_veth,
        netns: a.netns,
        created_unix: a.created_unix,
        boot_id: a.boot_id,
    }
}

#[tonic::async_trait]
impl<N: Netlink, S: Store> v1::inspect_server::Inspect for InspectService<N, S> {
    async fn list_allocations(
        &self,
        request: tonic::Request<v1::ListAllocationsRequest>,
    ) -> Result<tonic::Response<v1::ListAllocationsResponse>, tonic::Status> {
        if let Err(msg) = crate::server::authorize(&request) {
            tracing::warn!("refused: {msg}");
            return Err(tonic::Status::permission_denied(msg));
        }
        let req = request.into_inner();
        let network = (!req.network.is_empty()).then_some(req.network.as_str());
        let mut list = self
            .engine
            .store()
            .list(network)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        list.retain(|a| matches_container(a, &req.container));
        list.sort_by(|a, b| (&a.network, a.address).cmp(&(&b.network, b.address)));
        Ok(tonic::Response::new(v1::ListAllocationsResponse {
            allocations: list.into_iter().map(to_proto).collect(),
        }))
    }
}
