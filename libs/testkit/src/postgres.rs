//! Databases of a test's own, next to the local `fraud` database.

use sqlx::Connection;

/// Creates an empty database named after `hint` (made unique) on the local server, and
/// returns its URL.
pub async fn create_database(hint: &str) -> String {
    let admin_url = admin_url();
    // Letters, digits and underscores only.
    let name = crate::unique_name(hint).replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

/// Drops the database at `url` (best effort: a test's clean-up).
pub async fn drop_database(url: &str) {
    let _ = try_drop_database(url).await;
}

/// Drops the database at `url`; the error says why it could not.
pub async fn try_drop_database(url: &str) -> Result<(), sqlx::Error> {
    let Some((_, name)) = url.rsplit_once('/') else {
        return Ok(());
    };
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await?;
    // `FORCE` is refused while autovacuum works on the database (a role may not
    // terminate the worker); a plain `DROP` cancels the worker itself.
    let mut dropped = Ok(());
    for statement in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("DROP DATABASE IF EXISTS {name}"),
    ] {
        dropped = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            .map(drop);
        if dropped.is_ok() {
            break;
        }
    }
    dropped
}

fn admin_url() -> String {
    crate::local_settings().postgres.url.expose().clone()
}
