//! Critical sections: transfers between account entities that lock both accounts.

use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

/// A bank account.
#[entity]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Balance in cents.
    pub balance: i64,
}

#[entity]
impl Account {
    /// New accounts open with 100.
    pub fn initial() -> Self {
        Account { balance: 100 }
    }

    /// Adds money.
    pub fn deposit(&mut self, amount: i64) {
        self.balance += amount;
    }

    /// Takes money out; fails (and changes nothing) if the balance is too low.
    pub fn withdraw(&mut self, amount: i64) -> Result<i64, ActivityError> {
        if amount > self.balance {
            return Err(ActivityError::non_retriable("insufficient funds"));
        }
        self.balance -= amount;
        Ok(self.balance)
    }

    /// The balance.
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

/// A transfer request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    /// Source account key.
    pub from: String,
    /// Target account key.
    pub to: String,
    /// Amount.
    pub amount: i64,
}

/// Moves money between two accounts inside a critical section: no other orchestration can
/// touch either account in between, and concurrent transfers never deadlock.
#[orchestrator]
pub async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, OrchestrationError> {
    let section = ctx
        .lock(&[
            EntityId::of::<Account>(&t.from)?,
            EntityId::of::<Account>(&t.to)?,
        ])
        .await?;
    let from = ctx.entity::<Account>(&t.from);
    if from.balance().await? < t.amount {
        return Ok(false);
    }
    from.withdraw(t.amount).await?;
    ctx.entity::<Account>(&t.to).deposit(t.amount).await?;
    section.release();
    Ok(true)
}
