//! The compact event batch (protocol 1.5, [`crate::flow_batch`]) written and read by hand: the bytes
//! `rmp_serde` writes for `ServerMessage::FlowBatch` (structs as arrays, unit variants as their names,
//! other variants as a one-entry map), without serde's generic machinery on every field of every flow.
//! A profile of a library client taking a million flows a second put most of its time in that machinery
//! (a string check and a name lookup per enum field, a call per byte of an address), and most of the
//! agent's sending thread in the other direction.
//!
//! One format, two codecs: [`write`] produces exactly `codec::encode_compact`'s bytes, and [`read`] takes
//! exactly what it writes. Anything else [`read`] does not take on itself (a flow with more or fewer
//! fields from another version, an integer where a name was expected) gives `None`, and the caller
//! decodes the frame with serde as before; so this module changes how fast a frame is read, never what
//! it reads. Peers and policy attributions (a few per connection, strings and lists) go through serde
//! inside the frame. The tests compare both codecs with serde's on every variant.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::{
    codec,
    flow::{CtState, EventType, MatchType, Peer, PolicyAttribution, Protocol, TcpFlags, TrafficDirection, Verdict},
    flow_batch::{CompactEvent, CompactFlow, FlowBatch},
    message::{LossSource, LostEvents},
};

/// Fields of a [`CompactFlow`] on the wire.
const FLOW_FIELDS: usize = 25;

/// The names the unit variants go by on the wire (serde's `rename_all` of each type).
const EVENT_TYPES: [(&str, EventType); 5] = [
    ("trace", EventType::Trace),
    ("drop", EventType::Drop),
    ("policy-verdict", EventType::PolicyVerdict),
    ("capture", EventType::Capture),
    ("agent", EventType::Agent),
];
const VERDICTS: [(&str, Verdict); 3] =
    [("forwarded", Verdict::Forwarded), ("dropped", Verdict::Dropped), ("audit", Verdict::Audit)];
const DIRECTIONS: [(&str, TrafficDirection); 3] = [
    ("ingress", TrafficDirection::Ingress),
    ("egress", TrafficDirection::Egress),
    ("unknown", TrafficDirection::Unknown),
];
const PROTOCOLS: [(&str, Protocol); 5] = [
    ("TCP", Protocol::Tcp),
    ("UDP", Protocol::Udp),
    ("SCTP", Protocol::Sctp),
    ("ICMP", Protocol::Icmp),
    ("ICMPV6", Protocol::Icmpv6),
];
/// `Protocol::Other(n)`'s variant name (a one-entry map to the number).
const PROTOCOL_OTHER: &str = "OTHER";
const MATCH_TYPES: [(&str, MatchType); 5] = [
    ("l3-l4", MatchType::L3L4),
    ("l3-only", MatchType::L3Only),
    ("l4-only", MatchType::L4Only),
    ("all", MatchType::All),
    ("none", MatchType::None),
];
const CT_STATES: [(&str, CtState); 4] = [
    ("new", CtState::New),
    ("established", CtState::Established),
    ("reply", CtState::Reply),
    ("related", CtState::Related),
];
const LOSS_SOURCES: [(&str, LossSource); 3] = [
    ("kernel-buffer", LossSource::KernelBuffer),
    ("client-queue", LossSource::ClientQueue),
    ("decode-error", LossSource::DecodeError),
];

fn name_of<T: PartialEq + Copy>(table: &[(&'static str, T)], value: T) -> &'static str {
    table.iter().find(|(_, v)| *v == value).map(|(name, _)| *name).expect("every variant is in its table")
}

fn value_of<T: Copy>(table: &[(&'static str, T)], name: &[u8]) -> Option<T> {
    table.iter().find(|(n, _)| n.as_bytes() == name).map(|(_, v)| *v)
}

/// Appends `ServerMessage::FlowBatch(batch)` as `codec::encode_compact` would write it.
pub fn write(batch: &FlowBatch, out: &mut Vec<u8>) -> Result<(), codec::CodecError> {
    map_len(out, 1);
    str(out, "FlowBatch");
    array_len(out, 3);
    out.push(if batch.reset { 0xc3 } else { 0xc2 });
    array_len(out, batch.peers.len());
    for peer in &batch.peers {
        serde_value(out, peer)?;
    }
    array_len(out, batch.events.len());
    for event in &batch.events {
        map_len(out, 1);
        match event {
            CompactEvent::Flow(flow) => {
                str(out, "Flow");
                write_flow(flow, out)?;
            }
            CompactEvent::Lost(lost) => {
                str(out, "Lost");
                array_len(out, 2);
                str(out, name_of(&LOSS_SOURCES, lost.source));
                uint(out, lost.count);
            }
        }
    }
    Ok(())
}

fn write_flow(f: &CompactFlow, out: &mut Vec<u8>) -> Result<(), codec::CodecError> {
    array_len(out, FLOW_FIELDS);
    uint(out, f.time_ns);
    uint(out, f.ktime_ns);
    str(out, name_of(&EVENT_TYPES, f.event_type));
    str(out, name_of(&VERDICTS, f.verdict));
    uint(out, f.drop_reason.into());
    ip(out, f.source_ip);
    ip(out, f.destination_ip);
    match f.protocol {
        Protocol::Other(n) => {
            map_len(out, 1);
            str(out, PROTOCOL_OTHER);
            uint(out, n.into());
        }
        known => str(out, name_of(&PROTOCOLS, known)),
    }
    uint(out, f.source_port.into());
    uint(out, f.destination_port.into());
    uint(out, f.tcp_flags.0.into());
    uint(out, f.icmp_type.into());
    uint(out, f.icmp_code.into());
    uint(out, f.source.into());
    uint(out, f.destination.into());
    uint(out, f.endpoint_id.into());
    str(out, name_of(&DIRECTIONS, f.traffic_direction));
    uint(out, f.ifindex.into());
    uint(out, f.packet_len.into());
    match f.is_reply {
        None => out.push(0xc0),
        Some(reply) => out.push(if reply { 0xc3 } else { 0xc2 }),
    }
    match f.match_type {
        None => out.push(0xc0),
        Some(m) => str(out, name_of(&MATCH_TYPES, m)),
    }
    match &f.policy {
        None => out.push(0xc0),
        Some(policy) => serde_value(out, policy)?,
    }
    match f.ct_state {
        None => out.push(0xc0),
        Some(state) => str(out, name_of(&CT_STATES, state)),
    }
    uint(out, f.cpu.into());
    match f.policy_revision {
        None => out.push(0xc0),
        Some(revision) => uint(out, revision),
    }
    Ok(())
}

/// A value with many strings (a peer, a policy attribution), through serde as the rest of the protocol.
fn serde_value<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), codec::CodecError> {
    rmp_serde::encode::write(out, value).map_err(|source| codec::CodecError::Encode { what: "server", source })
}

fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    let octets = |out: &mut Vec<u8>, octets: &[u8]| {
        array_len(out, octets.len());
        octets.iter().for_each(|o| uint(out, (*o).into()));
    };
    match ip {
        IpAddr::V4(v4) => octets(out, &v4.octets()),
        IpAddr::V6(v6) => octets(out, &v6.octets()),
    }
}

/// An unsigned integer in its shortest form, as `rmp::encode::write_uint` chooses it.
fn uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= u8::MAX.into() {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u16::MAX.into() {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u32::MAX.into() {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len <= u8::MAX.into() {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= u16::MAX.into() {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn array_len(out: &mut Vec<u8>, len: usize) {
    container_len(out, len, 0x90, 0xdc);
}

fn map_len(out: &mut Vec<u8>, len: usize) {
    container_len(out, len, 0x80, 0xde);
}

/// A fix-size marker below 16, else the 16- or 32-bit form (`wide`, `wide + 1`).
fn container_len(out: &mut Vec<u8>, len: usize, fix: u8, wide: u8) {
    if len < 16 {
        out.push(fix | len as u8);
    } else if len <= u16::MAX.into() {
        out.push(wide);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(wide + 1);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// Reads a frame body that is a `FlowBatch` written as [`write`] writes it; `None` for anything else
/// (the caller decodes it with serde, which also gives the error for a broken frame).
pub fn read(body: &[u8]) -> Option<FlowBatch> {
    let mut r = Reader { buf: body };
    if r.map_len()? != 1 || r.str()? != b"FlowBatch" || r.array_len()? != 3 {
        return None;
    }
    let reset = r.bool()?;
    let peers = (0..r.count()?).map(|_| r.serde_value::<Peer>()).collect::<Option<Vec<_>>>()?;
    let count = r.count()?;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        if r.map_len()? != 1 {
            return None;
        }
        events.push(match r.str()? {
            b"Flow" => CompactEvent::Flow(read_flow(&mut r)?),
            b"Lost" => {
                if r.array_len()? != 2 {
                    return None;
                }
                let source = value_of(&LOSS_SOURCES, r.str()?)?;
                CompactEvent::Lost(LostEvents { source, count: r.uint()? })
            }
            _ => return None,
        });
    }
    r.buf.is_empty().then_some(FlowBatch { reset, peers, events })
}

fn read_flow(r: &mut Reader<'_>) -> Option<CompactFlow> {
    if r.array_len()? != FLOW_FIELDS {
        return None;
    }
    Some(CompactFlow {
        time_ns: r.uint()?,
        ktime_ns: r.uint()?,
        event_type: value_of(&EVENT_TYPES, r.str()?)?,
        verdict: value_of(&VERDICTS, r.str()?)?,
        drop_reason: r.small()?,
        source_ip: r.ip()?,
        destination_ip: r.ip()?,
        protocol: if r.peek()? & 0xf0 == 0x80 {
            if r.map_len()? != 1 || r.str()? != PROTOCOL_OTHER.as_bytes() {
                return None;
            }
            Protocol::Other(r.small()?)
        } else {
            value_of(&PROTOCOLS, r.str()?)?
        },
        source_port: r.small()?,
        destination_port: r.small()?,
        tcp_flags: TcpFlags(r.small()?),
        icmp_type: r.small()?,
        icmp_code: r.small()?,
        source: r.small()?,
        destination: r.small()?,
        endpoint_id: r.small()?,
        traffic_direction: value_of(&DIRECTIONS, r.str()?)?,
        ifindex: r.small()?,
        packet_len: r.small()?,
        is_reply: r.option(Reader::bool)?,
        match_type: r.option(|r| value_of(&MATCH_TYPES, r.str()?))?,
        policy: r.option(Reader::serde_value::<PolicyAttribution>)?,
        ct_state: r.option(|r| value_of(&CT_STATES, r.str()?))?,
        cpu: r.small()?,
        policy_revision: r.option(Reader::uint)?,
    })
}

/// A cursor over a frame body; every read checks what is left.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |v, b| v << 8 | u64::from(*b)))
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(b.into()),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    /// An unsigned integer that must fit `T`.
    fn small<T: TryFrom<u64>>(&mut self) -> Option<T> {
        T::try_from(self.uint()?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    /// Nil, or what `read` reads.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == 0xc0 {
            self.buf = &self.buf[1..];
            return Some(None);
        }
        read(self).map(Some)
    }

    /// A string's bytes (names are compared as bytes: no text is kept from here).
    fn str(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        };
        self.take(len)
    }

    fn array_len(&mut self) -> Option<usize> {
        self.container_len(0x90, 0xdc)
    }

    /// An array's length where every item takes a byte at least: a length beyond what is left is a
    /// broken frame, refused before anything is allocated for it.
    fn count(&mut self) -> Option<usize> {
        self.array_len().filter(|&n| n <= self.buf.len())
    }

    fn map_len(&mut self) -> Option<usize> {
        self.container_len(0x80, 0xde)
    }

    fn container_len(&mut self, fix: u8, wide: u8) -> Option<usize> {
        match self.byte()? {
            b if b & 0xf0 == fix => Some(usize::from(b & 0x0f)),
            b if b == wide => Some(self.be(2)? as usize),
            b if b == wide + 1 => Some(self.be(4)? as usize),
            _ => None,
        }
    }

    fn ip(&mut self) -> Option<IpAddr> {
        let mut octets = [0u8; 16];
        let len = self.array_len()?;
        if len != 4 && len != 16 {
            return None;
        }
        for octet in &mut octets[..len] {
            *octet = self.small()?;
        }
        Some(if len == 4 {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(octets))
        })
    }

    /// One whole value of any shape, decoded by serde (with the protocol's depth limit).
    fn serde_value<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        let start = self.buf;
        self.skip(0)?;
        codec::decode("server", &start[..start.len() - self.buf.len()]).ok()
    }

    /// Steps over one value, nested at most [`codec::MAX_DEPTH`] deep.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > codec::MAX_DEPTH {
            return None;
        }
        let (items, bytes) = match self.byte()? {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            b @ 0x80..=0x8f => (2 * usize::from(b & 0x0f), 0),
            b @ 0x90..=0x9f => (usize::from(b & 0x0f), 0),
            b @ 0xa0..=0xbf => (0, usize::from(b & 0x1f)),
            0xc4 | 0xd9 => (0, self.be(1)? as usize),
            0xc5 | 0xda => (0, self.be(2)? as usize),
            0xc6 | 0xdb => (0, self.be(4)? as usize),
            0xc7 => (0, self.be(1)? as usize + 1),
            0xc8 => (0, self.be(2)? as usize + 1),
            0xc9 => (0, self.be(4)? as usize + 1),
            0xca | 0xce | 0xd2 => (0, 4),
            0xcb | 0xcf | 0xd3 => (0, 8),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xd4 => (0, 2),
            0xd5 => (0, 3),
            0xd6 => (0, 5),
            0xd7 => (0, 9),
            0xd8 => (0, 17),
            0xdc => (self.be(2)? as usize, 0),
            0xdd => (self.be(4)? as usize, 0),
            0xde => (2 * self.be(2)? as usize, 0),
            0xdf => (2 * self.be(4)? as usize, 0),
            0xc1 => return None,
        };
        self.take(bytes)?;
        // Every item takes a byte at least: more items than bytes left is a broken frame.
        if items > self.buf.len() {
            return None;
        }
        (0..items).try_for_each(|_| self.skip(depth + 1))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        ServerMessage,
        flow::{PolicyName, fixtures::flow_between},
        flow_batch::PeerNumbers,
        message::Event,
    };

    fn serde_bytes(batch: &FlowBatch) -> Vec<u8> {
        codec::encode_compact("server", &ServerMessage::FlowBatch(batch.clone())).unwrap().to_vec()
    }

    /// Flows that between them take every variant of every field and every width of every integer.
    fn every_shape() -> Vec<Event> {
        let policies = [
            None,
            Some(PolicyAttribution::AllowedBy(vec![PolicyName { namespace: "ns".into(), name: "allow-web".into() }])),
            Some(PolicyAttribution::DefaultDeny {
                isolated_by: vec![
                    PolicyName { namespace: "ns".into(), name: "a".repeat(40) },
                    PolicyName { namespace: "other".into(), name: "deny".into() },
                ],
            }),
        ];
        let protocols = [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Other(47),
            Protocol::Other(200),
        ];
        let widths = [0u64, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, u64::from(u32::MAX), u64::MAX];
        let mut events = Vec::new();
        for i in 0..40usize {
            let mut f = flow_between(1 + (i % 5) as u16, 7, i as u16);
            f.time_ns = widths[i % widths.len()];
            f.ktime_ns = widths[(i + 3) % widths.len()];
            f.event_type = EVENT_TYPES[i % EVENT_TYPES.len()].1;
            f.verdict = VERDICTS[i % VERDICTS.len()].1;
            f.drop_reason = (widths[i % widths.len()] & 0xff) as u8;
            if i % 3 == 1 {
                f.source_ip = "fd00:10:200::a".parse().unwrap();
                f.destination_ip = "2001:db8::ff:1".parse().unwrap();
            }
            f.protocol = protocols[i % protocols.len()];
            f.source_port = (widths[(i + 1) % widths.len()] & 0xffff) as u16;
            f.destination_port = (widths[(i + 2) % widths.len()] & 0xffff) as u16;
            f.tcp_flags = TcpFlags((i * 37 % 256) as u8);
            f.icmp_type = (i * 13 % 256) as u8;
            f.icmp_code = (i % 16) as u8;
            f.endpoint_id = (widths[(i + 4) % widths.len()] & 0xffff) as u16;
            f.traffic_direction = DIRECTIONS[i % DIRECTIONS.len()].1;
            f.ifindex = (widths[(i + 5) % widths.len()] & 0xffff_ffff) as u32;
            f.packet_len = (widths[(i + 6) % widths.len()] & 0xffff_ffff) as u32;
            f.is_reply = [None, Some(false), Some(true)][i % 3];
            f.match_type = if i % 6 == 5 { None } else { Some(MATCH_TYPES[i % MATCH_TYPES.len()].1) };
            f.policy = policies[i % policies.len()].clone();
            f.ct_state = if i % 5 == 4 { None } else { Some(CT_STATES[i % CT_STATES.len()].1) };
            f.cpu = (i % 3) as u32 * 200;
            f.policy_revision = if i % 2 == 0 { None } else { Some(widths[i % widths.len()]) };
            events.push(Event::Flow(Arc::new(f)));
            if i % 7 == 0 {
                let source = LOSS_SOURCES[i % LOSS_SOURCES.len()].1;
                events.push(Event::Lost(LostEvents { source, count: widths[i % widths.len()] }));
            }
        }
        events
    }

    #[test]
    fn writes_what_serde_writes_and_reads_it_back_for_every_variant() {
        let mut numbers = PeerNumbers::default();
        let events = every_shape();
        for chunk in [&events[..], &events[..1], &events[5..30], &[]] {
            let batch = numbers.batch(chunk);
            let mut ours = Vec::new();
            write(&batch, &mut ours).unwrap();
            assert_eq!(ours, serde_bytes(&batch), "{} events", chunk.len());
            assert_eq!(read(&ours), Some(batch.clone()));
            let ServerMessage::FlowBatch(by_serde) = codec::decode("server", &ours).unwrap() else { panic!() };
            assert_eq!(by_serde, batch);
        }
    }

    #[test]
    fn long_batches_and_a_reset_use_the_wide_forms() {
        let many: Vec<Event> =
            (0..70_000u32).map(|i| Event::Flow(Arc::new(flow_between(1, 2, (i % 60_000) as u16)))).collect();
        let mut batch = PeerNumbers::default().batch(&many);
        batch.reset = true;
        let mut ours = Vec::new();
        write(&batch, &mut ours).unwrap();
        assert_eq!(ours, serde_bytes(&batch));
        assert_eq!(read(&ours), Some(batch));
    }

    /// What the hand reader does not take is left to serde: the caller's result is serde's either way.
    #[test]
    fn other_shapes_are_left_to_serde() {
        let batch = PeerNumbers::default().batch(&every_shape()[..3]);
        let mut body = Vec::new();
        write(&batch, &mut body).unwrap();
        // Every cut of a good frame (a truncated body), and a byte more.
        for len in 0..body.len() {
            assert_eq!(read(&body[..len]), None, "cut at {len}");
        }
        let mut longer = body.clone();
        longer.push(0xc0);
        assert_eq!(read(&longer), None);
        // A flow with a field more, as a later version might send: serde's business.
        let mut extra = Vec::new();
        map_len(&mut extra, 1);
        str(&mut extra, "FlowBatch");
        array_len(&mut extra, 3);
        extra.push(0xc2);
        array_len(&mut extra, 0);
        array_len(&mut extra, 1);
        map_len(&mut extra, 1);
        str(&mut extra, "Flow");
        let mut flow = Vec::new();
        let CompactEvent::Flow(f) = &batch.events[0] else { panic!() };
        write_flow(f, &mut flow).unwrap();
        extra.extend_from_slice(&[0xdc, 0, FLOW_FIELDS as u8 + 1]);
        extra.extend_from_slice(&flow[3..]);
        extra.push(0x07);
        assert_eq!(read(&extra), None);
        // Another message entirely, and an enum written as something else.
        let hello = codec::encode("server", &ServerMessage::Error { message: "no".into() }).unwrap();
        assert_eq!(read(&hello), None);
        let at = body.windows(5).position(|w| w == b"trace").expect("the first flow is a trace");
        let mut renamed = body.clone();
        renamed[at..at + 5].copy_from_slice(b"TRACE");
        assert_eq!(read(&renamed), None);
    }

    /// Damaged frames: whatever the hand reader takes, serde reads the same from the same bytes (so
    /// taking a frame by hand can never change what a client sees).
    #[test]
    fn what_the_hand_reader_takes_from_a_damaged_frame_serde_reads_the_same() {
        let batch = PeerNumbers::default().batch(&every_shape()[..12]);
        let mut good = Vec::new();
        write(&batch, &mut good).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut taken, mut left) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 4 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes[at] ^= 1 << (next() % 8),
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
                if bytes.is_empty() {
                    bytes.push(0xc0);
                }
            }
            match read(&bytes) {
                Some(ours) => {
                    taken += 1;
                    let theirs = codec::decode::<ServerMessage>("server", &bytes);
                    assert!(
                        matches!(&theirs, Ok(ServerMessage::FlowBatch(b)) if *b == ours),
                        "read by hand: {ours:?}\nby serde: {theirs:?}\nbytes: {bytes:02x?}"
                    );
                }
                None => left += 1,
            }
        }
        // Both kinds happen: changed values the reader takes, broken shapes it leaves.
        assert!(taken > 1_000 && left > 1_000, "{taken} taken, {left} left to serde");
    }

    #[test]
    fn counts_beyond_the_frame_and_deep_nesting_are_refused_without_allocating_them() {
        let mut body = Vec::new();
        map_len(&mut body, 1);
        str(&mut body, "FlowBatch");
        array_len(&mut body, 3);
        body.push(0xc2);
        array_len(&mut body, 0);
        body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read(&body), None);
        // A peer nested far too deep: the skip stops at the protocol's depth.
        let mut deep = Vec::new();
        map_len(&mut deep, 1);
        str(&mut deep, "FlowBatch");
        array_len(&mut deep, 3);
        deep.push(0xc2);
        array_len(&mut deep, 1);
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        deep.push(0xc0);
        array_len(&mut deep, 0);
        assert_eq!(read(&deep), None);
    }
}
