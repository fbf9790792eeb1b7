//! The service manager's side of `wharf serve` (systemd's `sd_notify`
//! protocol, through the `sd-notify` crate): `READY=1` once wharf serves,
//! `STOPPING=1` when graceful shutdown begins, and `WATCHDOG=1` pings at half
//! of `WATCHDOG_USEC` for as long as a [`SelfCheck`] passes.
//!
//! Owns: when those messages are sent, and the self-check they rest on.
//! `READY=1` goes out only after the same check the watchdog runs first
//! passes: the cache was opened and reconciled (before the server started),
//! the registry listener is bound and its accept loop answers, the admin
//! socket accepts connections. So `systemctl start` returns when a client can
//! be served, not when the process exists.
//!
//! Must never: ping when the check fails (a wedged wharf, whose runtime no
//! longer runs new tasks or whose accept loop no longer answers, must stop
//! pinging so that systemd restarts it; a bare timer would keep a dead server
//! alive); block serving (every check is bounded in time, the socket writes
//! run on the blocking pool, one at a time); do anything at all without
//! `NOTIFY_SOCKET` (tests, Docker, a shell): then [`Service::start`] spawns
//! nothing. Knows nothing of the cache or the upstreams: it only asks the
//! server's [`Pulse`].

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::server::Pulse;

/// How long each part of the self-check may take.
const CHECK_WITHIN: Duration = Duration::from_secs(2);
/// How long start-up may take to pass its first self-check (systemd's
/// `TimeoutStartSec`, 90 s by default, ends it anyway).
const START_WITHIN: Duration = Duration::from_secs(60);
/// Pause between start-up self-checks that did not pass yet.
const START_RETRY: Duration = Duration::from_millis(20);

/// What proves wharf serves.
pub struct SelfCheck {
    /// The registry listener's accept loop.
    pub pulse: Pulse,
    /// The admin socket (`wharf ls`, `du`, ... reach the server there).
    pub admin_socket: PathBuf,
}

impl SelfCheck {
    /// Passes when the runtime runs a new task, the accept loop answers and
    /// the admin socket takes a connection, each within `within`.
    async fn run(&self, within: Duration) -> Result<(), &'static str> {
        let spawned = tokio::time::timeout(within, tokio::spawn(async {})).await;
        if !matches!(spawned, Ok(Ok(()))) {
            return Err("the async runtime did not run a new task");
        }
        if !self.pulse.beat(within).await {
            return Err("the registry listener's accept loop did not answer");
        }
        match tokio::time::timeout(within, tokio::net::UnixStream::connect(&self.admin_socket))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err("the admin socket does not take connections"),
        }
    }
}

/// wharf as a systemd service: the task that says ready and pings.
pub struct Service {
    task: Option<JoinHandle<()>>,
}

impl Service {
    /// Under systemd (`NOTIFY_SOCKET` set), spawns the task that sends
    /// `READY=1` once `check` passes and then, when the unit has a
    /// `WatchdogSec=`, pings at half of it while `check` keeps passing.
    /// Elsewhere, does nothing. Call it once the server is about to run:
    /// the check needs its accept loop.
    pub fn start(check: SelfCheck) -> Service {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Service { task: None };
        }
        Service {
            task: Some(tokio::spawn(run(check, sd_notify::watchdog_enabled()))),
        }
    }

    /// Graceful shutdown has begun: `STOPPING=1` (systemd then waits up to
    /// `TimeoutStopSec` and no longer expects pings), and no more pings.
    pub fn stopping(&self) {
        if let Some(t) = &self.task {
            t.abort();
            if let Err(e) = sd_notify::notify(&[NotifyState::Stopping]) {
                tracing::warn!(error = %e, "cannot tell systemd that wharf is stopping");
            }
        }
    }
}

async fn run(check: SelfCheck, watchdog: Option<Duration>) {
    let started = tokio::time::Instant::now();
    loop {
        match check.run(CHECK_WITHIN).await {
            Ok(()) => break,
            Err(why) if started.elapsed() >= START_WITHIN => {
                tracing::error!(
                    why,
                    "not ready after {START_WITHIN:?}: systemd is not told wharf is ready"
                );
                return;
            }
            Err(_) => tokio::time::sleep(START_RETRY).await,
        }
    }
    if !send(vec![NotifyState::Ready, NotifyState::Status("serving")]).await {
        return;
    }
    tracing::info!(
        ready_after_ms = started.elapsed().as_millis() as u64,
        "systemd told wharf is ready"
    );
    let Some(timeout) = watchdog else { return };
    let every = timeout / 2;
    tracing::info!(
        ?every,
        "pinging systemd's watchdog while the self-check passes"
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tick.tick().await;
        match check.run(CHECK_WITHIN.min(every / 2)).await {
            Ok(()) => {
                if failing {
                    tracing::info!("self-check passes again: pinging systemd's watchdog");
                    failing = false;
                }
                send(vec![NotifyState::Watchdog]).await;
            }
            Err(why) => {
                if !failing {
                    tracing::error!(
                        why,
                        "self-check failed: no watchdog ping (systemd restarts wharf if this lasts {timeout:?})"
                    );
                    failing = true;
                }
            }
        }
    }
}

/// Sends `states` from the blocking pool (the notification socket is a
/// blocking datagram socket); whether it went.
async fn send(states: Vec<NotifyState<'static>>) -> bool {
    let sent = tokio::task::spawn_blocking(move || sd_notify::notify(&states)).await;
    match sent {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "systemd notification did not run");
            false
        }
    }
}
