//! Federated-learning messages between the leader coordinator and nodes.
//!
//! The leader opens a stream to each selected node with
//! [`NodeStreamRequest::FlTrain`](crate::NodeStreamRequest) and gets one
//! [`FlTrainResponse`] back. Parameters travel as raw little-endian f32 in
//! the model's layout order; the node's data never leaves it, only the
//! update does.

use serde::{Deserialize, Serialize};

/// Largest frame of a federated-learning exchange (models and updates).
pub const MAX_FL_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One round of local training asked of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlTrainRequest {
    /// Job id.
    pub job: String,
    /// Round number (from 1).
    pub round: u64,
    /// The job spec as JSON (`backends::fl::JobSpec`).
    pub spec_json: String,
    /// The global model, raw little-endian f32.
    pub global: Vec<u8>,
}

/// A node's local update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlUpdate {
    /// The client index the node trained as.
    pub client: u32,
    /// New local weights minus the global ones, raw little-endian f32.
    pub delta: Vec<u8>,
    /// Training rows used (the FedAvg weight).
    pub num_samples: u64,
    /// Mean training loss of the last local epoch.
    pub train_loss: f64,
    /// Training accuracy of the last local epoch.
    pub train_accuracy: f64,
    /// Loss of the received global model on the node's holdout rows.
    pub eval_loss: f64,
    /// Accuracy of the received global model on the holdout rows.
    pub eval_accuracy: f64,
    /// Holdout rows (0 when the job keeps none).
    pub eval_samples: u64,
    /// Seconds the node spent.
    pub seconds: f64,
    /// Noise multiplier of client-side differential privacy, if applied.
    pub dp_noise_multiplier: Option<f32>,
}

/// A node's answer to an [`FlTrainRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FlTrainResponse {
    /// The update.
    Update(FlUpdate),
    /// Training failed (bad spec, missing data, crash), with the reason.
    Failed(String),
}
