//! Wake-ups: new work for waiting polls, messages for one agent, and changes to a job
//! that log followers wait on. With several servers on PostgreSQL each wake-up is also
//! published to the others (see `cluster`), which replay it here. Nothing here is
//! durable: every waiter re-reads the store after waking, so a missed wake-up only costs
//! latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, Notify};

/// One wake-up, as servers tell each other.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    Work,
    Agent(String),
    Job(Arc<str>),
    Ended,
}

impl Wake {
    /// One line: `w`, `a:ID`, `j:ID` or `e`.
    pub fn encode(&self) -> String {
        match self {
            Wake::Work => "w".into(),
            Wake::Agent(id) => format!("a:{id}"),
            Wake::Job(id) => format!("j:{id}"),
            Wake::Ended => "e".into(),
        }
    }

    pub fn decode(line: &str) -> Option<Wake> {
        match line.split_once(':') {
            Some(("a", id)) => Some(Wake::Agent(id.to_string())),
            Some(("j", id)) => Some(Wake::Job(Arc::from(id))),
            None if line == "w" => Some(Wake::Work),
            None if line == "e" => Some(Wake::Ended),
            _ => None,
        }
    }
}

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
    /// Where this server's wake-ups go to reach the other servers.
    publish: Option<mpsc::UnboundedSender<Wake>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::with_publisher(None)
    }
}

impl Hub {
    fn with_publisher(publish: Option<mpsc::UnboundedSender<Wake>>) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                work: Notify::new(),
                agents: Mutex::new(HashMap::new()),
                jobs: broadcast::channel(4096).0,
                ended: Notify::new(),
                publish,
            }),
        }
    }

    /// A hub whose wake-ups are also sent to the receiver (for the other servers).
    pub fn published() -> (Hub, mpsc::UnboundedReceiver<Wake>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Hub::with_publisher(Some(tx)), rx)
    }

    /// A wake-up of this server: acted on here, and sent to the other servers.
    fn emit(&self, w: Wake) {
        match &self.inner.publish {
            Some(tx) => {
                self.replay(w.clone());
                let _ = tx.send(w);
            }
            None => self.replay(w),
        }
    }

    /// A wake-up from another server: acted on here only.
    pub fn replay(&self, w: Wake) {
        match w {
            Wake::Work => self.inner.work.notify_waiters(),
            Wake::Agent(id) => {
                let notify = self
                    .inner
                    .agents
                    .lock()
                    .expect("hub lock")
                    .get(&id)
                    .cloned();
                if let Some(n) = notify {
                    n.notify_waiters();
                }
            }
            Wake::Job(id) => {
                let _ = self.inner.jobs.send(id);
            }
            Wake::Ended => self.inner.ended.notify_one(),
        }
    }

    /// Jobs became claimable: wake every waiting poll.
    pub fn work_available(&self) {
        self.emit(Wake::Work);
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
        self.emit(Wake::Agent(agent_id.to_string()));
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
        self.emit(Wake::Job(Arc::from(job_id)));
    }

    pub fn subscribe_jobs(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.jobs.subscribe()
    }

    /// An attempt ended (its log is complete).
    pub fn attempt_ended(&self) {
        self.emit(Wake::Ended);
    }

    /// Resolves after the next [`Hub::attempt_ended`] (or at once for one that came
    /// while nobody waited).
    pub async fn logs_to_move(&self) {
        self.inner.ended.notified().await;
    }
}
