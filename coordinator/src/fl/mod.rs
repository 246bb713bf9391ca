//! Federated learning on the coordinators: the leader's round driver
//! ([`driver`]), content-addressed checkpoints replicated before their
//! hash is committed ([`blobs`]), client selection ([`select`]) and the
//! screening of client updates ([`screen`]).

pub mod blobs;
pub mod driver;
pub mod screen;
pub mod select;

pub use blobs::BlobStore;
pub use driver::FlContext;
