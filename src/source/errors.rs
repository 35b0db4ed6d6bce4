//! Which errors a reconnect can heal and which end `cdc run`, decided by SQLSTATE (never by
//! the message text, which `lc_messages` translates) and by cdc's own [`Unrecoverable`](crate::retry::Unrecoverable).

use pgwire_replication::PgWireError;

use crate::retry::is_unrecoverable;

/// Postgres invalidated the replication slot (it held more WAL than `max_slot_wal_keep_size`
/// allows, or the WAL was removed): the changes after its last confirmed position are gone, and
/// no retry can bring them back. `cdc run` exits with status 3 on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "replication slot {slot:?} was invalidated by Postgres (wal_status lost): it held more WAL than max_slot_wal_keep_size \
     allows, and the changes committed after {confirmed} are gone from the server. The way back: \
     1. `cdc setup --recreate-slot` (drops the lost slot and creates a new one: streaming resumes from that moment); \
     2. `cdc rebuild-index --all` to make the search indexes equal to the tables again; \
     3. webhook receivers missed the changes committed between {confirmed} and the new slot's position \
     (`cdc setup --recreate-slot` prints it): resynchronise them from the tables"
)]
pub struct SlotLost {
    pub slot: String,
    /// The slot's last confirmed position, as Postgres shows it ("the slot's last confirmed position" when unknown).
    pub confirmed: String,
}

/// The slot this run was streaming from is gone when it reconnects: dropped (`cdc teardown`,
/// `pg_drop_replication_slot`) or a failover to a server that does not have it. Creating a new
/// one, as a first start does, would silently skip every change committed in between, so
/// `cdc run` stops instead, with status 3 like a lost slot.
#[derive(Debug, thiserror::Error)]
#[error(
    "replication slot {slot:?} disappeared while cdc was streaming from it (dropped, or a failover to a server      without it); changes committed after its last confirmed position ({confirmed}) may never be streamed.      The way back: 1. `cdc setup` (creates a new slot: streaming resumes from that moment);      2. `cdc rebuild-index --all` to make the search indexes equal to the tables again;      3. resynchronise webhook receivers from the tables"
)]
pub struct SlotGone {
    pub slot: String,
    pub confirmed: String,
}

/// Whether the error says the slot's changes are gone (lost or dropped): `cdc run` exits 3.
pub fn slot_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<SlotLost>() || c.is::<SlotGone>())
}

/// Whether retrying cannot help: cdc's own verdict, else the server's SQLSTATE. Errors without
/// one (refused connections, resets, timeouts) are worth retrying.
pub fn is_fatal(e: &anyhow::Error) -> bool {
    if is_unrecoverable(e) || slot_gone(e) {
        return true;
    }
    sqlstate(e).is_some_and(|code| !heals(&code))
}

/// The SQLSTATE of the first server error in the chain, from tokio-postgres or the replication
/// client (which puts it in its message as `(SQLSTATE 28P01)`).
pub fn sqlstate(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return pg.code().map(|c| c.code().to_string());
        }
        match cause.downcast_ref::<PgWireError>() {
            Some(PgWireError::Server(text)) | Some(PgWireError::Auth(text)) => {
                let (_, rest) = text.rsplit_once("(SQLSTATE ")?;
                rest.get(..5).map(str::to_string)
            }
            _ => None,
        }
    })
}

/// Whether the slot is active for another reader (SQLSTATE 55006 "object in use"): another
/// `cdc run` streams from it, and this one stands by until it is released.
pub fn slot_in_use(e: &anyhow::Error) -> bool {
    sqlstate(e).as_deref() == Some("55006")
}

/// Whether an error with this SQLSTATE may heal by itself, so is worth retrying: connection exceptions (08), serialization and
/// deadlock (40), insufficient resources such as too many connections (53), operator
/// intervention such as a shutdown or a server still starting (57), system errors (58) and
/// internal errors (XX), and 55006 "object in use": the slot is held by another reader, which
/// may stop (a standby waits for it). Everything else — authentication (28P01, 28000), a
/// missing database (3D000) or object (42704), a missing privilege (42501), `wal_level` below
/// logical or an invalidated slot (55000) — needs a person.
pub fn heals(code: &str) -> bool {
    let class = code.get(..2).unwrap_or("");
    matches!(class, "08" | "40" | "53" | "57" | "58" | "XX") || code == "55006"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> anyhow::Error {
        anyhow::Error::new(PgWireError::Server(text.to_string())).context("starting replication")
    }

    #[test]
    fn setup_errors_end_the_run() {
        for code in ["28P01", "28000", "42501", "42704", "3D000", "55000", "42P01"] {
            assert!(!heals(code), "{code}");
        }
    }

    #[test]
    fn errors_that_heal_are_retried() {
        for code in ["08006", "57P01", "57P03", "53300", "55006", "40001", "XX000", "58030"] {
            assert!(heals(code), "{code}");
        }
    }

    #[test]
    fn the_replication_clients_sqlstate_is_read_from_its_message() {
        let e = server("le mot de passe est incorrect (SQLSTATE 28P01)");
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
        assert!(is_fatal(&e));
        let in_use = server(r#"replication slot "cdc" is active for PID 7 (SQLSTATE 55006)"#);
        assert!(!is_fatal(&in_use));
        assert!(slot_in_use(&in_use), "a standby waits for the slot");
        assert!(!slot_in_use(&server("connection refused (SQLSTATE 08006)")));
        assert!(!is_fatal(&anyhow::Error::new(PgWireError::Io(std::sync::Arc::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        )))));
    }

    #[test]
    fn cdcs_own_verdict_is_fatal_anywhere_in_the_chain() {
        use crate::retry::Unrecoverable;
        let e = anyhow::Error::new(Unrecoverable("wal_level is replica".into())).context("preflight");
        assert!(is_fatal(&e));
        assert!(!is_fatal(&anyhow::anyhow!("something else")));
    }
}
