//! Entity batches: run the operations in an entity's inbox, one at a time, and commit the
//! new state with the replies and signals they produced.

use super::Inner;
use super::episode::Stuck;
use crate::entity::{BatchOutput, EntityId, EntityRecord};
use crate::error::decode;
use crate::history::{Event, RuntimeStatus};
use crate::ids::Timestamp;
use crate::storage::{EpisodeCommit, InstanceRecord, LockToken, Message};

pub(crate) async fn run_batch(
    inner: &Inner,
    instance: InstanceRecord,
    messages: Vec<Message>,
    lock: LockToken,
    now: Timestamp,
) -> Result<(), Stuck> {
    let Some(id) = EntityId::from_instance_id(&instance.instance_id) else {
        return Err(Stuck::Error(format!(
            "`{}` is not a valid entity id (`@name@key`)",
            instance.instance_id
        )));
    };
    let Some(run) = inner.registry.entity(&id.name) else {
        return Err(Stuck::Error(format!(
            "no entity named `{}` is registered on this worker; its messages stay queued until a worker that knows it picks them up",
            id.name
        )));
    };
    let mut record: EntityRecord = match instance.output.as_deref() {
        Some(json) => decode(json)
            .map_err(|e| Stuck::Error(format!("entity record of {id} is corrupt: {e}")))?,
        None => EntityRecord::default(),
    };
    let mut out = BatchOutput {
        record: super::lifecycle::entity_operations_wanted(),
        ..BatchOutput::default()
    };
    let consumed = messages.iter().map(|m| m.id).collect();
    for m in messages {
        if matches!(m.event, Event::ExecutionStarted { .. }) {
            continue;
        }
        record
            .handle(&id, run.as_ref(), m.event, now, &mut out)
            .await;
    }
    tracing::debug!(entity = %id, operations = out.operations, "entity batch");
    let mut commit = EpisodeCommit::new(
        instance.instance_id.clone(),
        lock,
        RuntimeStatus::Running,
        now,
    );
    commit.consumed = consumed;
    commit.output = Some(crate::error::encode(&record).map_err(|e| Stuck::Error(e.to_string()))?);
    commit.messages = out.messages;
    commit.new_instances = out.new_instances;
    inner
        .store
        .commit_episode(commit)
        .await
        .map_err(Stuck::Store)?;
    super::lifecycle::entity_operations(&instance.instance_id, &id.name, out.ran);
    Ok(())
}
