//! Wake-ups: signalling this process's waiters, `NOTIFY`ing other processes, and listening
//! for their notifications.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Config, Notification, Socket};

use super::PostgresStore;
use super::schema::quote_ident;
use super::util::{R, describe, pause};
use crate::storage::StoreSignals;

impl PostgresStore {
    /// Sends the signals for `wake` in this process, and (unless the write's transaction
    /// did) has the notifier tell the other processes.
    pub(super) fn signal(&self, wake: Wake) {
        // Wake times read before this write may be stale.
        self.inner.writes.fetch_add(1, Ordering::AcqRel);
        if !self.inner.options.notify_in_transaction {
            self.inner.notifier.post(wake);
        }
        let s = &self.inner.signals;
        if wake.activity {
            s.activity_work();
        }
        if wake.orchestration {
            s.orchestration_work();
        }
        if wake.finished {
            s.instance_finished();
        } else if wake.changed {
            s.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// With [`PostgresOptions::notify_in_transaction`], queues the `NOTIFY` for `wake` in
    /// `tx` (delivered if `tx` commits).
    ///
    /// [`PostgresOptions::notify_in_transaction`]: super::PostgresOptions::notify_in_transaction
    pub(super) async fn notify(&self, tx: &Transaction<'_>, wake: Wake) -> R<()> {
        if !self.inner.options.notify_in_transaction {
            return Ok(());
        }
        let kinds = wake.kinds();
        if kinds.is_empty() {
            return Ok(());
        }
        let payload = format!("{}:{kinds}", self.inner.origin);
        let st = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        tx.execute(&st, &[&self.inner.channel, &payload]).await?;
        Ok(())
    }
}

/// Which signals a write sends.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Wake {
    pub(super) orchestration: bool,
    pub(super) activity: bool,
    /// Some instance changed.
    pub(super) changed: bool,
    /// Some instance may have finished (or been purged, or replaced): completion waiters
    /// look again. Not set by steps that finish nothing, so a waiter does not read its
    /// instance after every step.
    pub(super) finished: bool,
}

impl Wake {
    pub(super) const ORCHESTRATION: Wake = Wake {
        orchestration: true,
        activity: false,
        changed: false,
        finished: false,
    };

    /// A creation (which may replace, and terminate, an instance).
    pub(super) const CREATED: Wake = Wake {
        orchestration: true,
        activity: false,
        changed: false,
        finished: true,
    };

    /// A purge.
    pub(super) const PURGED: Wake = Wake {
        orchestration: false,
        activity: false,
        changed: true,
        finished: true,
    };

    /// The notification payload's kinds: `o` (orchestration work), `a` (activity work),
    /// `c` (an instance may have finished: what every change was before `u`), `u` (an
    /// instance changed, none finished; a listener that does not know `u` ignores it).
    fn kinds(self) -> String {
        let mut kinds = String::new();
        if self.orchestration {
            kinds.push('o');
        }
        if self.activity {
            kinds.push('a');
        }
        if self.finished {
            kinds.push('c');
        } else if self.changed {
            kinds.push('u');
        }
        kinds
    }

    pub(super) fn or(self, other: Wake) -> Wake {
        Wake {
            orchestration: self.orchestration || other.orchestration,
            activity: self.activity || other.activity,
            changed: self.changed || other.changed,
            finished: self.finished || other.finished,
        }
    }

    fn bits(self) -> u8 {
        u8::from(self.orchestration)
            | u8::from(self.activity) << 1
            | u8::from(self.changed) << 2
            | u8::from(self.finished) << 3
    }

    fn from_bits(bits: u8) -> Self {
        Wake {
            orchestration: bits & 1 != 0,
            activity: bits & 2 != 0,
            changed: bits & 4 != 0,
            finished: bits & 8 != 0,
        }
    }
}

/// Sends this process's notifications right after its writes commit, coalescing the writes
/// made while one is on its way into the next. Each is its own short transaction with
/// `synchronous_commit` off (a notification is not durable anyway), so the writes themselves
/// commit without Postgres's notification lock and group their WAL flushes.
#[derive(Default)]
pub(super) struct Notifier {
    pending: AtomicU8,
    wake: Notify,
}

impl Notifier {
    fn post(&self, wake: Wake) {
        let bits = wake.bits();
        if bits != 0 {
            self.pending.fetch_or(bits, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// `prefix` is the batch up to the payload's opening quote and origin.
    pub(super) async fn run(self: Arc<Self>, pool: Pool, prefix: String) {
        loop {
            self.wake.notified().await;
            let bits = self.pending.swap(0, Ordering::AcqRel);
            if bits == 0 {
                continue;
            }
            let sql = format!("{prefix}{}'; COMMIT", Wake::from_bits(bits).kinds());
            let sent = match pool.get().await {
                Ok(conn) => {
                    let sent = conn.batch_execute(&sql).await;
                    if sent.is_err() {
                        // A statement that failed after the batch's `BEGIN` leaves its
                        // transaction open (aborted): end it before the connection goes back
                        // to the pool (a user's pool, with `from_pool`).
                        let _ = conn.batch_execute("ROLLBACK").await;
                    }
                    sent.map_err(|e| describe(&e))
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                // Other processes find the work on their fallback poll.
                tracing::warn!(error = %e, "cannot send a PostgreSQL notification");
            }
        }
    }
}

/// A listening connection: its client (kept open) and the notifications it receives.
type Listening = (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<Notification>,
);

/// Opens a connection `LISTEN`ing on the channel it is given, with the `Config` and TLS
/// connector it was made with (so `PostgresStore` needs no TLS type parameter).
pub(super) type ListenConnector = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Listening, tokio_postgres::Error>> + Send>>
        + Send
        + Sync,
>;

/// A [`ListenConnector`] opening connections with `config` through `tls`.
pub(super) fn listen_connector<T>(config: Config, tls: T) -> ListenConnector
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Arc::new(move |channel: String| {
        let config = config.clone();
        let tls = tls.clone();
        Box::pin(async move { listen(&config, tls, &channel).await })
    })
}

/// Opens a connection that `LISTEN`s on `channel`; notifications arrive on the receiver,
/// which closes when the connection is lost.
async fn listen<T>(
    config: &Config,
    tls: T,
    channel: &str,
) -> Result<Listening, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "PostgreSQL notification connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await?;
    Ok((client, rx))
}

/// The background task turning notifications into [`StoreSignals`].
pub(super) struct Listener {
    /// Opens the listening connection; `None`: there is none (a user's pool), only the
    /// fallback poll.
    pub(super) connect: Option<ListenConnector>,
    pub(super) channel: String,
    pub(super) origin: String,
    pub(super) signals: Arc<StoreSignals>,
    pub(super) poll: Duration,
}

impl Listener {
    /// `first`: the listening connection opened at start (`None` without a connector).
    pub(super) async fn run(self, first: Option<Listening>) {
        // Without a listening connection, a receiver that never yields (its sender lives as
        // long as this task).
        let (_never_sends, idle) = mpsc::unbounded_channel();
        let (mut client, mut notifications) = match first {
            Some((client, rx)) => (Some(client), rx),
            None => (None, idle),
        };
        let mut tick = tokio::time::interval(self.poll.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                n = notifications.recv() => {
                    if let Some(n) = n {
                        self.handle(&n);
                    } else if let Some(connect) = &self.connect {
                        drop(client.take());
                        let (c, rx) = self.reconnect(connect).await;
                        client = Some(c);
                        notifications = rx;
                        // Notifications may have been missed meanwhile: look at everything.
                        self.signals.orchestration_work();
                        self.signals.activity_work();
                        self.signals.instance_finished();
                    }
                }
                _ = tick.tick() => {
                    self.signals.orchestration.notify_one();
                    self.signals.activity.notify_one();
                    // Completion waiters too, in case a notification was lost.
                    self.signals.instance_finished();
                }
            }
        }
    }

    fn handle(&self, n: &Notification) {
        let Some((origin, kinds)) = n.payload().split_once(':') else {
            return;
        };
        if origin == self.origin {
            return;
        }
        for kind in kinds.chars() {
            match kind {
                'o' => {
                    self.signals.orchestration_work();
                    self.signals.instance_finished();
                }
                'a' => self.signals.activity_work(),
                'c' => self.signals.instance_finished(),
                'u' => {
                    self.signals.changed.send_modify(|v| *v = v.wrapping_add(1));
                }
                _ => {}
            }
        }
    }

    async fn reconnect(&self, connect: &ListenConnector) -> Listening {
        let mut backoff = Duration::from_millis(100);
        loop {
            match connect(self.channel.clone()).await {
                Ok(pair) => return pair,
                Err(e) => {
                    tracing::warn!(error = %describe(&e), retry_in = ?backoff, "cannot reconnect the PostgreSQL notification listener");
                    pause(backoff).await;
                    // Keep polling meanwhile (slowly), so work still gets done.
                    self.signals.orchestration.notify_one();
                    self.signals.activity.notify_one();
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
