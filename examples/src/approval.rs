//! Pattern 5, human interaction: wait for an approval event, escalate on timeout.

use std::time::Duration;

use durable_core::prelude::*;

/// Sends a notification (here: returns the text it would send).
#[derive(Debug, Clone, Copy)]
pub struct Notify;

impl Activity for Notify {
    const NAME: &'static str = "notify";
    type Input = String;
    type Output = String;
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, text: String) -> Result<String, ActivityError> {
        Ok(format!("sent: {text}"))
    }
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
#[derive(Debug, Clone, Copy)]
pub struct ApprovalFlow;

impl Orchestrator for ApprovalFlow {
    const NAME: &'static str = "approval_flow";
    type Input = ApprovalRequest;
    type Output = String;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, req: ApprovalRequest) -> Result<String, OrchestrationError> {
        ctx.call(Notify, format!("please approve {}", req.item)).await?;
        let timeout = Duration::from_secs(req.timeout_hours * 3600);
        match ctx.wait_for_event_timeout::<Decision>(APPROVAL_EVENT, timeout).await {
            Ok(d) if d.approved => Ok(format!("{} approved by {}", req.item, d.by)),
            Ok(d) => Ok(format!("{} rejected by {}", req.item, d.by)),
            Err(e) if e.is_timeout() => {
                ctx.call(Notify, format!("escalating {}", req.item)).await?;
                Ok(format!("{} escalated after {}h", req.item, req.timeout_hours))
            }
            Err(e) => Err(e.into()),
        }
    }
}
