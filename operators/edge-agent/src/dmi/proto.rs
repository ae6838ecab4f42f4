//! The generated DMI v1beta1 types, servers and clients (`build.rs`, `proto/dmi_v1beta1.proto`).
#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

tonic::include_proto!("v1beta1");
