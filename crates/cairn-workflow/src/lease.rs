//! Leases: how an engine claims runs, keeps them while it works on them, and lets them
//! go. A lease names its owner and an epoch that grows with every claim; every record
//! is fenced by it.

use chrono::{DateTime, Utc};

use cairn_log::{Arg, IntoArg, Sql, Tx, WriteOptions, args};
use cairn_types::WorkflowId;

use crate::engine::{Engine, EngineError};

/// What a run's lease is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) run_id: WorkflowId,
    pub(crate) epoch: i64,
}

/// Aborts a task when dropped: a lease's heartbeat lives exactly as long as the
/// attempt it keeps alive, however the attempt ends (it returns, panics, or the task
/// driving it is aborted).
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Engine {
    pub(crate) fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.inner.config.lease)
            .unwrap_or(chrono::Duration::seconds(30))
    }

    /// Claims up to `max` runnable runs, in one unit of work. Also says when the next
    /// run not yet runnable is due.
    pub(crate) async fn claim(
        &self,
        max: usize,
    ) -> Result<(Vec<Lease>, Option<DateTime<Utc>>), EngineError> {
        if self.inner.workflows.is_empty() || max == 0 {
            return Ok((Vec::new(), None));
        }
        let engine = self.clone();
        self.inner
            .store
            .db()
            .write(WriteOptions::default(), move |tx| {
                let engine = engine.clone();
                Box::pin(async move { engine.claim_in(tx, max).await })
            })
            .await
    }

    async fn claim_in(
        &self,
        tx: &mut Tx,
        max: usize,
    ) -> Result<(Vec<Lease>, Option<DateTime<Utc>>), EngineError> {
        let now = self.now();
        // Only runs of a kind and version this engine has: another version's runs are
        // left to an engine that has it.
        let pairs = self.inner.workflows.pairs();
        let mut args: Vec<Arg> = args![now];
        let conditions: Vec<String> = pairs
            .iter()
            .map(|(kind, version)| {
                args.push((*kind).into_arg());
                args.push((*version).into_arg());
                format!(
                    "(r.kind = ${} AND r.definition_version = ${})",
                    args.len() - 1,
                    args.len()
                )
            })
            .collect();
        let defined = conditions.join(" OR ");
        args.push(i64::try_from(max * 2).unwrap_or(i64::MAX).into_arg());
        // A paused run, or a run of a paused kind, is not claimed: it keeps its place
        // (`next_run_at`) and is claimed once resumed.
        let sql = Sql::built(format!(
            "SELECT r.id FROM workflow_runs r LEFT JOIN workflow_leases l ON l.run_id = r.id \
             WHERE r.next_run_at IS NOT NULL AND r.next_run_at <= $1 AND ({defined}) \
             AND r.paused_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM workflow_kind_pauses k WHERE k.kind = r.kind) \
             AND (l.run_id IS NULL OR l.expires_at < $1) ORDER BY r.next_run_at LIMIT ${}",
            args.len()
        ));
        let candidates = tx.conn().fetch_all(sql, args).await?;
        let mut leases = Vec::new();
        for candidate in candidates {
            if leases.len() >= max {
                break;
            }
            let run_id: WorkflowId = candidate.get("id")?;
            let row = tx
                .conn()
                .fetch_optional(
                    "INSERT INTO workflow_leases (run_id, owner, epoch, expires_at) VALUES ($1, $2, 1, $3)
                     ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner,
                         epoch = workflow_leases.epoch + 1, expires_at = excluded.expires_at
                     WHERE workflow_leases.expires_at < $4
                     RETURNING epoch",
                    args![run_id, self.inner.config.worker_id.as_str(), self.lease_until(now), now],
                )
                .await?;
            if let Some(row) = row {
                leases.push(Lease {
                    run_id,
                    epoch: row.get("epoch")?,
                });
            }
        }
        let next_due = if leases.is_empty() {
            let mut args: Vec<Arg> = args![now];
            for (kind, version) in &pairs {
                args.push((*kind).into_arg());
                args.push((*version).into_arg());
            }
            let sql = Sql::built(format!(
                "SELECT MIN(next_run_at) AS due FROM workflow_runs r \
                 WHERE next_run_at IS NOT NULL AND next_run_at > $1 AND ({defined}) \
                 AND paused_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM workflow_kind_pauses k WHERE k.kind = r.kind)"
            ));
            tx.conn()
                .fetch_optional(sql, args)
                .await?
                .map(|row| row.get::<Option<DateTime<Utc>>>("due"))
                .transpose()?
                .flatten()
        } else {
            None
        };
        Ok((leases, next_due))
    }

    /// Extends a lease; false when it is no longer ours.
    pub(crate) async fn renew(&self, lease: Lease) -> Result<bool, EngineError> {
        let until = self.lease_until(self.now());
        // Urgent: a renewal queued behind command traffic could arrive after the lease
        // ran out, and another engine would then run the step again (send the email
        // again) with no crash at all.
        let options = WriteOptions {
            priority: cairn_log::Priority::Urgent,
            ..WriteOptions::default()
        };
        let changed: u64 = self
            .inner
            .store
            .db()
            .write(options, move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .execute(
                            "UPDATE workflow_leases SET expires_at = $3 WHERE run_id = $1 AND epoch = $2",
                            args![lease.run_id, lease.epoch, until],
                        )
                        .await
                })
            })
            .await?;
        Ok(changed == 1)
    }

    /// Keeps a lease (and so the run from every engine's claims) until `until`.
    pub(crate) async fn defer(
        &self,
        lease: Lease,
        until: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        self.inner
            .store
            .db()
            .write(WriteOptions::default(), move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .execute(
                            "UPDATE workflow_leases SET expires_at = $3 WHERE run_id = $1 AND epoch = $2",
                            args![lease.run_id, lease.epoch, until],
                        )
                        .await
                        .map(drop)
                })
            })
            .await
            .map_err(EngineError::Database)
    }

    pub(crate) async fn release(&self, lease: Lease) -> Result<(), EngineError> {
        self.inner
            .store
            .db()
            .write(WriteOptions::default(), move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .execute(
                            "DELETE FROM workflow_leases WHERE run_id = $1 AND epoch = $2",
                            args![lease.run_id, lease.epoch],
                        )
                        .await
                        .map(drop)
                })
            })
            .await
            .map_err(EngineError::Database)
    }

    /// Renews the lease at a third of its length, as time passes on the engine's
    /// clock, while the returned guard lives. Each nap is timed from when the last one
    /// ended (the first from now), not from when a renewal came back or the task first
    /// ran: a slow renewal does not push the next one later.
    pub(crate) fn heartbeat(&self, lease: Lease) -> AbortOnDrop {
        let engine = self.clone();
        let every = engine.inner.config.lease / 3;
        let mut nap = engine.inner.clock.sleep(every);
        AbortOnDrop(tokio::spawn(async move {
            loop {
                nap.await;
                nap = engine.inner.clock.sleep(every);
                match engine.renew(lease).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(run_id = %lease.run_id, error = %error, "could not renew a lease")
                    }
                }
            }
        }))
    }

    /// Checks the lease in `tx` and extends it: the fence every record passes.
    pub(crate) async fn fence(&self, tx: &mut Tx, lease: Lease) -> Result<(), EngineError> {
        let held = tx
            .conn()
            .execute(
                "UPDATE workflow_leases SET expires_at = $4 WHERE run_id = $1 AND epoch = $2 AND owner = $3",
                args![
                    lease.run_id,
                    lease.epoch,
                    self.inner.config.worker_id.as_str(),
                    self.lease_until(self.now())
                ],
            )
            .await?;
        if held != 1 {
            return Err(EngineError::LeaseLost {
                run_id: lease.run_id,
            });
        }
        Ok(())
    }
}
