//! A long random run: many clients, dropped servers and time passing.

use super::*;

/// A small deterministic PRNG for the simulation (no hidden randomness in tests either).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn simulation_thousand_clients_five_server_connections_with_drops_and_timeouts() {
    let mut sim = sim();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut servers: Vec<ConnHandle> = (0..5)
        .map(|_| sim.connect_server("chat", "app-1"))
        .collect();
    let mut clients: Vec<(ConnHandle, String)> = Vec::new();
    let mut peer_closed: BTreeSet<ConnHandle> = BTreeSet::new();
    for round in 0..1000u32 {
        let (c, id) = sim.connect_client(
            "chat",
            Some(&format!("user{}", round % 37)),
            if round % 3 == 0 {
                "messagepack"
            } else {
                "json"
            },
        );
        clients.push((c, id.clone()));
        if rng.below(10) != 0 {
            sim.accept_handshake(c, &id);
        }
        match rng.below(100) {
            // A client leaves.
            0..=4 => {
                let (victim, _) = clients[rng.below(clients.len() as u64) as usize];
                if sim.relay().clients.map.contains_key(&victim) {
                    peer_closed.insert(victim);
                }
                sim.closed_by_peer(victim);
            }
            // A server connection drops and the app server reconnects it.
            5 => {
                let i = rng.below(servers.len() as u64) as usize;
                sim.closed_by_peer(servers[i]);
                servers[i] = sim.connect_server("chat", "app-1");
            }
            // Time passes, and the app servers keep their connections alive.
            6..=9 => {
                sim.advance(Duration::from_secs(rng.below(8) + 1));
                for &s in &servers {
                    sim.send_service(s, &ServiceMessage::Ping(service::Ping::default()));
                }
            }
            _ => {}
        }
        // Live clients keep pinging, most of the time.
        if round % 50 == 0 {
            let live: Vec<ConnHandle> = sim.relay().clients.map.keys().copied().collect();
            for c in live {
                if rng.below(20) != 0 {
                    sim.data(
                        c,
                        if sim.relay().clients.map[&c]
                            .link
                            .as_ref()
                            .map(|l| l.protocol)
                            == Some(HubProtocol::MessagePack)
                        {
                            b"\x02\x91\x06"
                        } else {
                            b"{\"type\":6}\x1e"
                        },
                    );
                }
            }
        }
    }
    // Let every remaining client time out.
    for _ in 0..20 {
        sim.advance(Duration::from_secs(5));
        for &s in &servers {
            sim.send_service(s, &ServiceMessage::Ping(service::Ping::default()));
        }
    }
    assert_eq!(sim.relay().client_count(), 0, "every client is gone");

    // Every client was mapped exactly once (one OpenConnection across all servers) ...
    let mut opens: BTreeMap<&str, usize> = BTreeMap::new();
    for msgs in sim.to_server.values() {
        for m in msgs {
            if let ServiceMessage::OpenConnection(o) = m {
                *opens.entry(o.connection_id.as_str()).or_default() += 1;
            }
        }
    }
    assert_eq!(opens.len(), 1000);
    assert!(opens.values().all(|&n| n == 1));
    // ... and closed exactly once: by its peer, or by one Close output from the relay.
    for (c, _) in &clients {
        let relay_closes = sim.closed.get(c).map_or(0, Vec::len);
        let by_peer = usize::from(peer_closed.contains(c));
        assert_eq!(relay_closes + by_peer, 1, "client {c:?}");
    }
}
