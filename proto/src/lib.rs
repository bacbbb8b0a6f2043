//! The paretopo gRPC API: package `paretopo.v1` (the `.proto` files in `paretopo/v1/`) and the
//! tonic/prost code generated from it.
//!
//! Along with the binaries, this is the only crate that knows protobuf: libraries such as `pareto`
//! work on plain Rust types, and conversions happen at the edge of each service.
//!
//! What is here:
//! - [`v1`]: messages, the four service traits (`*_server`) and clients (`*_client`):
//!   `Coordinator`, `Learner`, `ToolServer` and `Actor`;
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for server reflection;
//! - [`codec::StrictCodec`]: the codec all generated services use (bad bytes -> `INVALID_ARGUMENT`).
//!
//! What is not: no service logic, no I/O, no validation beyond protobuf decoding.

pub mod codec;

/// Messages and services of package `paretopo.v1`.
pub mod v1 {
    #![allow(missing_docs)] // the generated code carries the .proto comments; some items have none
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("paretopo.v1");
}

/// The encoded `FileDescriptorSet` of every `paretopo.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paretopo_descriptor.bin"));

/// The fully-qualified gRPC service names, as reflection and health checks list them.
pub mod service_names {
    /// `paretopo.v1.Coordinator`.
    pub const COORDINATOR: &str = "paretopo.v1.Coordinator";
    /// `paretopo.v1.Learner`.
    pub const LEARNER: &str = "paretopo.v1.Learner";
    /// `paretopo.v1.ToolServer`.
    pub const TOOL_SERVER: &str = "paretopo.v1.ToolServer";
    /// `paretopo.v1.Actor`.
    pub const ACTOR: &str = "paretopo.v1.Actor";
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost::bytes::Bytes;

    use super::*;

    /// The embedded descriptor set must describe the four services and decode as protobuf; a
    /// stale or missing descriptor would break reflection for every client.
    #[test]
    fn descriptor_set_lists_every_service() {
        let set = prost_types_shim::decode(FILE_DESCRIPTOR_SET);
        for name in [
            service_names::COORDINATOR,
            service_names::LEARNER,
            service_names::TOOL_SERVER,
            service_names::ACTOR,
        ] {
            assert!(set.contains(&name.to_string()), "{name} missing from {set:?}");
        }
    }

    /// A message survives an encode/decode round trip with every field intact.
    #[test]
    fn trajectory_group_round_trips() {
        let group = v1::TrajectoryGroup {
            actor_id: "actor-3".into(),
            group_seq: 17,
            policy_version: 4,
            prompt_id: "synthetic:12".into(),
            prompt_tokens: 5,
            temperature: 1.0,
            trajectories: vec![v1::Trajectory {
                token_ids: vec![1, 2, 3, 4, 5, 6],
                loss_mask: vec![0, 0, 0, 0, 0, 1],
                sampling_logprobs: vec![0.0, 0.0, 0.0, 0.0, 0.0, -0.25],
                objectives: Some(v1::ObjectiveVector { values: vec![1.0, 0.5, 0.75] }),
                metrics: Some(v1::RawMetrics {
                    accuracy: 1.0,
                    tool_calls: 1,
                    generated_tokens: 1,
                    termination: v1::TerminationReason::Answered as i32,
                    tool_cost: 1.0,
                    wall_seconds: 0.5,
                }),
                answer_text: "42".into(),
            }],
        };
        let bytes = Bytes::from(group.encode_to_vec());
        let back = v1::TrajectoryGroup::decode(bytes).expect("decodes");
        assert_eq!(back, group);
    }

    /// Lists service names from a descriptor set with no dependency on prost-types: a
    /// `FileDescriptorSet` is `repeated FileDescriptorProto file = 1`, which has `string package = 2`
    /// and `repeated ServiceDescriptorProto service = 6` whose `string name = 1`.
    mod prost_types_shim {
        use prost::Message;

        #[derive(Clone, PartialEq, Message)]
        struct Set {
            #[prost(message, repeated, tag = "1")]
            file: Vec<File>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct File {
            #[prost(string, tag = "2")]
            package: String,
            #[prost(message, repeated, tag = "6")]
            service: Vec<Service>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct Service {
            #[prost(string, tag = "1")]
            name: String,
        }

        pub fn decode(bytes: &[u8]) -> Vec<String> {
            let set = Set::decode(bytes).expect("descriptor set decodes");
            set.file
                .iter()
                .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package, s.name)))
                .collect()
        }
    }
}
