//! A `--database-url` naming several hosts (libpq's `postgres://h1:p1,h2:p2/db?...`, README
//! "Running many servers and failing over"): the pool connects to whichever of them is the
//! primary now. sqlx takes one host, so pgfeed picks it: the first host that accepts a
//! connection and is not in recovery, in the order given. The listener (tokio-postgres, which
//! takes several hosts and `target_session_attrs=read-write` itself) finds the primary on every
//! reconnect, and points the pool at it again ([`repoint`]), so a running server follows the
//! primary through a failover.

use std::str::FromStr;

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use tokio_postgres::config::Host;

/// Whether `url` names more than one host.
pub fn is_multi_host(url: &str) -> bool {
    tokio_postgres::Config::from_str(url).is_ok_and(|c| c.get_hosts().len() > 1)
}

/// Connect options for the host of `url` that is the primary now.
pub async fn find(url: &str) -> anyhow::Result<PgConnectOptions> {
    let config = tokio_postgres::Config::from_str(url).context("parsing the database URL")?;
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let mut last_error = None;
    for (i, host) in hosts.iter().enumerate() {
        // libpq: one port for all hosts, or one per host.
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let mut single = tokio_postgres::Config::new();
        match host {
            Host::Tcp(h) => single.host(h),
            Host::Unix(p) => single.host_path(p),
        };
        single.port(port);
        if let Some(user) = config.get_user() {
            single.user(user);
        }
        if let Some(password) = config.get_password() {
            single.password(password);
        }
        if let Some(db) = config.get_dbname() {
            single.dbname(db);
        }
        single.connect_timeout(std::time::Duration::from_secs(5));
        match is_primary(&single).await {
            Ok(true) => {
                let mut options = PgConnectOptions::new().port(port);
                options = match host {
                    Host::Tcp(h) => options.host(h),
                    Host::Unix(p) => options.socket(p),
                };
                if let Some(user) = config.get_user() {
                    options = options.username(user);
                }
                if let Some(password) = config.get_password() {
                    options = options.password(&String::from_utf8_lossy(password));
                }
                if let Some(db) = config.get_dbname() {
                    options = options.database(db);
                }
                return Ok(options);
            }
            Ok(false) => last_error = Some(anyhow::anyhow!("{host:?}:{port} is a standby")),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(e).context("no host of the database URL is a primary now"),
        None => bail!("the database URL names no host"),
    }
}

async fn is_primary(config: &tokio_postgres::Config) -> anyhow::Result<bool> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let row = client.query_one("select not pg_is_in_recovery()", &[]).await;
    drop(client);
    let _ = driver.await;
    Ok(row?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_url_with_several_hosts_is_multi_host() {
        assert!(is_multi_host(
            "postgres://u@10.0.0.1:5432,10.0.0.2:5433/db?target_session_attrs=read-write"
        ));
        assert!(is_multi_host("host=a,b dbname=x"));
        assert!(!is_multi_host("postgres://u@10.0.0.1:5432/db"));
        assert!(!is_multi_host("not a url"));
    }
}
