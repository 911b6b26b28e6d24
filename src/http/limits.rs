//! Connection limits: per client and in total. One instance holds the WebSocket/SSE/long-poll
//! permits (each held for as long as its stream is open); another, in the accept loop, the TCP
//! connections themselves (each held for as long as its socket is open, upgrades included).
//! Both count a [`ClientKey`] (an IPv4 address or an IPv6 /64; see `client.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::client::ClientKey;

#[derive(Debug)]
pub struct ConnLimits {
    per_ip: usize,
    total: usize,
    open: Mutex<(HashMap<ClientKey, usize>, usize)>,
}

/// One open connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    /// The client it counts against; `None` counts in the total only.
    client: Option<ClientKey>,
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerIp(usize),
    Total(usize),
}

impl ConnLimits {
    pub fn new(per_ip: usize, total: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            per_ip,
            total,
            open: Mutex::new((HashMap::new(), 0)),
        })
    }

    pub fn acquire(self: &Arc<Self>, client: ClientKey) -> Result<ConnPermit, Refused> {
        self.take(Some(client))
    }

    /// A slot that counts in the total only: a trusted proxy's connections carry many clients,
    /// each limited by its forwarded address once its request is read.
    pub fn acquire_shared(self: &Arc<Self>) -> Result<ConnPermit, Refused> {
        self.take(None)
    }

    fn take(self: &Arc<Self>, client: Option<ClientKey>) -> Result<ConnPermit, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.1 >= self.total {
            return Err(Refused::Total(self.total));
        }
        if let Some(client) = client {
            let n = open.0.entry(client).or_default();
            if *n >= self.per_ip {
                return Err(Refused::PerIp(self.per_ip));
            }
            *n += 1;
        }
        open.1 += 1;
        Ok(ConnPermit {
            limits: self.clone(),
            client,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = self.client {
            if let Some(n) = open.0.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    open.0.remove(&client);
                }
            }
        }
        open.1 -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_ip_and_in_total_and_free_on_drop() {
        let limits = ConnLimits::new(2, 3);
        let a = ClientKey::of("127.0.0.1".parse().unwrap());
        let b = ClientKey::of("127.0.0.2".parse().unwrap());
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).unwrap_err(), Refused::PerIp(2));
        let _p3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).unwrap_err(), Refused::Total(3));
        drop(p1);
        assert!(limits.acquire(a).is_ok());
    }

    #[test]
    fn one_ipv6_64_is_one_client_and_shared_slots_count_in_the_total_only() {
        let limits = ConnLimits::new(1, 3);
        let _p = limits.acquire(ClientKey::of("2001:db8::1".parse().unwrap())).unwrap();
        let other_host = ClientKey::of("2001:db8::ffff:2".parse().unwrap());
        assert_eq!(limits.acquire(other_host).unwrap_err(), Refused::PerIp(1));
        let _s1 = limits.acquire_shared().unwrap();
        let _s2 = limits.acquire_shared().unwrap();
        assert_eq!(limits.acquire_shared().unwrap_err(), Refused::Total(3));
    }
}
