//! Federated learning on the coordinators: the leader's round driver
//! ([`driver`]), content-addressed checkpoints replicated before their
//! hash is committed ([`blobs`]), and client selection ([`select`]).

pub mod blobs;
pub mod driver;
pub mod select;

pub use blobs::BlobStore;
pub use driver::FlContext;
