//! Wake-ups inside one server: new work for waiting polls, messages for one agent, and
//! changes to a job that log followers wait on. Nothing here is durable: every waiter
//! re-reads the store after waking, so a missed wake-up only costs latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Notify};

/// Shared wake-up channels; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    work: Notify,
    agents: Mutex<HashMap<String, Arc<Notify>>>,
    jobs: broadcast::Sender<Arc<str>>,
    /// An attempt ended: its log may move to the object store.
    ended: Notify,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            inner: Arc::new(Inner {
                work: Notify::new(),
                agents: Mutex::new(HashMap::new()),
                jobs: broadcast::channel(4096).0,
                ended: Notify::new(),
            }),
        }
    }
}

impl Hub {
    /// Jobs became claimable: wake every waiting poll.
    pub fn work_available(&self) {
        self.inner.work.notify_waiters();
    }

    pub fn work(&self) -> &Notify {
        &self.inner.work
    }

    /// The notifier an agent's poll waits on (cancel requests, freed capacity).
    pub fn agent(&self, agent_id: &str) -> Arc<Notify> {
        let mut map = self.inner.agents.lock().expect("hub lock");
        map.entry(agent_id.to_string()).or_default().clone()
    }

    pub fn wake_agent(&self, agent_id: &str) {
        let notify = self
            .inner
            .agents
            .lock()
            .expect("hub lock")
            .get(agent_id)
            .cloned();
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// Jobs were queued (submitted, retried, run again): wake polls, tell watchers.
    pub fn queued<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.job_changed(id);
        }
        self.work_available();
    }

    /// A job's logs or state changed.
    pub fn job_changed(&self, job_id: &str) {
        let _ = self.inner.jobs.send(Arc::from(job_id));
    }

    pub fn subscribe_jobs(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.jobs.subscribe()
    }

    /// An attempt ended (its log is complete).
    pub fn attempt_ended(&self) {
        self.inner.ended.notify_one();
    }

    /// Resolves after the next [`Hub::attempt_ended`] (or at once for one that came
    /// while nobody waited).
    pub async fn logs_to_move(&self) {
        self.inner.ended.notified().await;
    }
}
