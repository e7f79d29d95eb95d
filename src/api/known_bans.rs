//! Keeps this replica's copy of where bans hold (`ban_index`) whole: LISTEN on
//! `bouncer_bans`, load every open ban's fingerprint, apply notifications, load again every
//! `RELOAD_EVERY`.

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::audit::Db;
use crate::ban_index::{BanIndex, RELOAD_EVERY, parse};
use crate::keys::BANS_CHANNEL;
use crate::retry::Backoff;
use std::time::Duration;

/// Keeps `index` whole until `shutdown`: LISTEN, load, apply notifications, load again every
/// [`RELOAD_EVERY`]; after a lost connection, not ready until connected and loaded again.
pub(crate) async fn follow(session: PgPool, index: Arc<BanIndex>, shutdown: CancellationToken) {
    // 200 ms, doubling to 5 s while PostgreSQL is away.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let connect = || async {
            let mut l = PgListener::connect_with(&session).await?;
            l.listen(BANS_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let failed = |e: &sqlx::Error, _| tracing::warn!(error = %e, "ban index: cannot LISTEN for new bans; checks ask PostgreSQL meanwhile");
        let Some(mut listener) = backoff.until_ok(&shutdown, connect, failed).await else { return };
        match follow_while_up(&mut listener, &Db::session(session.clone()), &index, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                index.set_ready(false);
                tracing::warn!(error = %e, "ban index: connection lost; checks ask PostgreSQL until it is loaded again");
                if !Backoff::sleep(backoff.next_wait(), &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Loads, then applies notifications and reloads on schedule until `shutdown` (`Ok`) or the
/// connection fails (`Err`: notifications may have been missed).
async fn follow_while_up(
    listener: &mut PgListener,
    db: &Db,
    index: &BanIndex,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    loop {
        let started = std::time::Instant::now();
        index.begin_load();
        let loaded = crate::audit::bans::open_ban_fingerprints(db).await?;
        let n = loaded.len();
        index.finish_load(loaded);
        tracing::info!(open_bans = n, ms = started.elapsed().as_millis() as u64, "ban index loaded");
        let reload = tokio::time::sleep(RELOAD_EVERY);
        tokio::pin!(reload);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = &mut reload => break,
                n = listener.try_recv() => match n? {
                    Some(n) => index.add(parse(n.payload())),
                    None => return Err(sqlx::Error::Protocol("the LISTEN connection was closed".into())),
                },
            }
        }
    }
}
