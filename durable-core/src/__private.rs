//! Items used only by code the macros generate. Not public API: may change at any time.

/// Implemented for every type that can cross history as JSON.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a durable payload",
    note = "inputs and outputs of activities and orchestrators are stored as JSON: derive `Serialize` and `Deserialize` for `{Self}`"
)]
pub trait Payload: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> Payload for T {}
