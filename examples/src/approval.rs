//! Pattern 5, human interaction: wait for an approval event, escalate on timeout.

use std::time::Duration;

use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

/// Sends a notification (here: returns the text it would send).
#[activity]
pub async fn notify(text: String) -> Result<String, ActivityError> {
    Ok(format!("sent: {text}"))
}

/// An approval request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// What needs approving.
    pub item: String,
    /// How long to wait before escalating, in hours.
    pub timeout_hours: u64,
}

/// The `approval` event's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// Approved or not.
    pub approved: bool,
    /// Who decided.
    pub by: String,
}

/// Name of the event that carries the decision.
pub const APPROVAL_EVENT: &str = "approval";

/// Asks for approval, waits up to the timeout, and escalates if nobody answers.
#[orchestrator]
pub async fn approval_flow(
    ctx: OrchestrationContext,
    req: ApprovalRequest,
) -> Result<String, OrchestrationError> {
    ctx.call(notify, format!("please approve {}", req.item))
        .await?;
    let timeout = Duration::from_secs(req.timeout_hours.saturating_mul(3600));
    match ctx
        .wait_for_event_timeout::<Decision>(APPROVAL_EVENT, timeout)
        .await
    {
        Ok(d) if d.approved => Ok(format!("{} approved by {}", req.item, d.by)),
        Ok(d) => Ok(format!("{} rejected by {}", req.item, d.by)),
        Err(e) if e.is_timeout() => {
            ctx.call(notify, format!("escalating {}", req.item)).await?;
            Ok(format!(
                "{} escalated after {}h",
                req.item, req.timeout_hours
            ))
        }
        Err(e) => Err(e.into()),
    }
}
