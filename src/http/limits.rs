//! Connection limits: per client IP and in total, held as permits by each WebSocket, SSE or
//! long-poll connection for as long as it is open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct ConnLimits {
    per_ip: usize,
    total: usize,
    open: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// One open connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
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

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.1 >= self.total {
            return Err(Refused::Total(self.total));
        }
        let n = open.0.entry(ip).or_default();
        if *n >= self.per_ip {
            return Err(Refused::PerIp(self.per_ip));
        }
        *n += 1;
        open.1 += 1;
        Ok(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.0.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.0.remove(&self.ip);
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
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).unwrap_err(), Refused::PerIp(2));
        let _p3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).unwrap_err(), Refused::Total(3));
        drop(p1);
        assert!(limits.acquire(a).is_ok());
    }
}
