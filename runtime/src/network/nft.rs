//! The node's nftables table, written over netlink (no `nft` binary): one `ip` table per Skiff
//! instance, named after its bridge so that servers side by side (tests) never touch each
//! other's rules.
//!
//! ```text
//! table ip skiff_<bridge> {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr <cluster> ip daddr != <cluster> ip daddr != 224.0.0.0/4 masquerade
//!     }
//! }
//! ```
//! Pod traffic leaving the cluster CIDR goes out with the node's address (as flannel's and the
//! bridge CNI plugin's `ipMasq` do); traffic between pods keeps its source.
//!
//! The table is (re)written in one atomic batch — create, delete, create with its chain and
//! rule — so a table left by a killed server is replaced whole, never appended to.
//!
//! The socket is opened on the calling thread and so lands in that thread's network namespace:
//! these calls are synchronous on purpose (a kernel round trip of microseconds), so a caller
//! that entered another namespace (the tests do) is never moved to a pool thread outside it.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, InetHookNumber,
    ListAttribute, NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage, TableAttribute,
    TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer, NetlinkMessage,
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::Ipv4Cidr;
use crate::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_PAYLOAD_NETWORK_HEADER`: offsets count from the IP header.
const NETWORK_HEADER: u32 = 1;
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
/// `NF_IP_PRI_NAT_SRC` (nft's `srcnat`).
const PRIORITY_SRCNAT: u32 = 100;
const NF_ACCEPT: u32 = 1;
const CHAIN: &str = "postrouting";

/// The table of the Skiff instance whose bridge is `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("skiff_{bridge}")
}

/// Writes (or replaces) the table that masquerades `cluster` traffic leaving the cluster.
pub fn write_masquerade_table(table: &str, cluster: Ipv4Cidr) -> Result<()> {
    let batch = vec![
        // Created first so that the delete after it cannot fail on a missing table.
        new_table(table),
        message(NfTablesMessage::DeleteTable(TableMessage { attributes: vec![TableAttribute::Name(table.into())] }), 0),
        new_table(table),
        message(
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(table.into()),
                    ChainAttribute::Name(CHAIN.into()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(InetHookNumber::PostRouting.into()),
                        Hook::Priority(PRIORITY_SRCNAT),
                    ]),
                    ChainAttribute::Policy(NF_ACCEPT),
                    ChainAttribute::Type("nat".into()),
                ],
            }),
            NLM_F_CREATE,
        ),
        message(
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.into()),
                    RuleAttribute::Chain(CHAIN.into()),
                    RuleAttribute::Expressions(masquerade_expressions(cluster)),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
        ),
    ];
    send_batch(batch).map_err(|e| Error::Network(format!("writing nftables table ip {table}: {e}")))
}

/// Deletes the table. Idempotent: a missing table is created and deleted in the same batch.
pub fn delete_table(table: &str) -> Result<()> {
    let batch = vec![
        new_table(table),
        message(NfTablesMessage::DeleteTable(TableMessage { attributes: vec![TableAttribute::Name(table.into())] }), 0),
    ];
    send_batch(batch).map_err(|e| Error::Network(format!("deleting nftables table ip {table}: {e}")))
}

/// Whether the calling thread's network namespace has the table.
pub fn table_exists(table: &str) -> Result<bool> {
    let mut get =
        message(NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(table.into())] }), 0);
    get.header.sequence_number = 1;
    match exchange(&[get], 1) {
        Ok(()) => Ok(true),
        Err(code) if code == libc::ENOENT => Ok(false),
        Err(code) => Err(Error::Network(format!(
            "looking up nftables table ip {table}: {}",
            std::io::Error::from_raw_os_error(code)
        ))),
    }
}

fn new_table(table: &str) -> NetlinkMessage<NetfilterMessage> {
    message(
        NfTablesMessage::NewTable(TableMessage { attributes: vec![TableAttribute::Name(table.into())] }),
        NLM_F_CREATE,
    )
}

fn message(inner: NfTablesMessage, flags: u16) -> NetlinkMessage<NetfilterMessage> {
    let mut msg =
        NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), inner));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    msg
}

fn control(inner: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    let header = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
    let mut msg = NetlinkMessage::from(NetfilterMessage::new(header, inner));
    msg.header.flags = NLM_F_REQUEST;
    msg
}

/// `ip saddr <cluster> ip daddr != <cluster> ip daddr != 224.0.0.0/4 masquerade`
fn masquerade_expressions(cluster: Ipv4Cidr) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mask = Ipv4Addr::from(u32::MAX << (32 - cluster.prefix));
    let multicast = (Ipv4Addr::new(224, 0, 0, 0), Ipv4Addr::new(240, 0, 0, 0));
    let mut exprs = Vec::new();
    exprs.extend(match_prefix(IPV4_SADDR, cluster.network, mask, Operator::Equal));
    exprs.extend(match_prefix(IPV4_DADDR, cluster.network, mask, Operator::NotEqual));
    exprs.extend(match_prefix(IPV4_DADDR, multicast.0, multicast.1, Operator::NotEqual));
    exprs.push(ListAttribute::Element(vec![ExpressionAttribute::Name("masq".into())]));
    exprs
}

/// Loads the address at `offset` of the IP header, masks it and compares it with `network`.
fn match_prefix(
    offset: u32,
    network: Ipv4Addr,
    mask: Ipv4Addr,
    op: Operator,
) -> [ListAttribute<ExpressionAttribute>; 3] {
    [
        Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(NETWORK_HEADER),
            Payload::Offset(offset),
            Payload::Len(4),
        ])
        .into(),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(mask.octets().to_vec())),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ])
        .into(),
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(op),
            Cmp::Data(DataAttribute::Value(network.octets().to_vec())),
        ])
        .into(),
    ]
}

/// Sends `messages` as one nfnetlink transaction (all or nothing) and waits for each ack.
fn send_batch(messages: Vec<NetlinkMessage<NetfilterMessage>>) -> std::result::Result<(), String> {
    let count = messages.len() as u32;
    let mut all = Vec::with_capacity(messages.len() + 2);
    all.push(control(ControlMessage::BatchBegin));
    all.extend(messages);
    all.push(control(ControlMessage::BatchEnd));
    for (seq, msg) in all.iter_mut().enumerate() {
        msg.header.sequence_number = seq as u32;
    }
    exchange(&all, count).map_err(|code| std::io::Error::from_raw_os_error(code).to_string())
}

/// Sends the messages in one write and reads until `acks` acknowledgements (or the first error,
/// as an errno) came back. A receive timeout keeps a kernel that never answers from hanging us.
fn exchange(messages: &[NetlinkMessage<NetfilterMessage>], acks: u32) -> std::result::Result<(), i32> {
    let mut buf = Vec::new();
    for msg in messages {
        let mut msg = msg.clone();
        msg.finalize();
        let start = buf.len();
        buf.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut buf[start..]);
    }
    let os = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(os)?;
    socket.bind_auto().map_err(os)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(os)?;
    let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: setsockopt reads a timeval of the size given from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    socket.send(&buf, 0).map_err(os)?;
    let mut acked = 0;
    let mut rx = vec![0u8; 64 * 1024];
    while acked < acks {
        let n = socket.recv(&mut &mut rx[..], 0).map_err(os)?;
        let mut at = 0;
        while at < n {
            let frame = NetlinkBuffer::new_checked(&rx[at..n]).map_err(|_| libc::EBADMSG)?;
            let len = frame.length() as usize;
            // Only acks and errors matter (a GET's answer before its ack needs no action), and
            // their code is the payload's first field: nothing else is decoded, so an attribute
            // this crate does not know can never fail the exchange.
            if frame.message_type() == NLMSG_ERROR {
                let code = frame.payload().get(..4).ok_or(libc::EBADMSG)?;
                let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                if code != 0 {
                    return Err(-code);
                }
                acked += 1;
            }
            at += (len + 3) & !3;
            if len == 0 {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_the_bridge_so_instances_never_share_one() {
        assert_eq!(table_name("skiff0"), "skiff_skiff0");
        assert_ne!(table_name("sk1"), table_name("sk2"));
    }

    #[test]
    fn the_masquerade_rule_matches_the_cluster_prefix_and_skips_multicast() {
        let exprs = masquerade_expressions(Ipv4Cidr::parse("10.42.0.0/16").unwrap());
        // Three (load, mask, compare) triples and the masq statement.
        assert_eq!(exprs.len(), 10);
        let cmp = |i: usize| match &exprs[i] {
            ListAttribute::Element(attrs) => attrs.clone(),
            other => panic!("unexpected {other:?}"),
        };
        let mask = cmp(1);
        assert!(mask.iter().any(|a| matches!(a, ExpressionAttribute::Data(Expressions::Bitwise(b))
            if b.contains(&Bitwise::Mask(DataAttribute::Value(vec![255, 255, 0, 0]))))));
        let saddr = cmp(2);
        assert!(saddr.iter().any(|a| matches!(a, ExpressionAttribute::Data(Expressions::Cmp(c))
            if c.contains(&Cmp::Op(Operator::Equal)) && c.contains(&Cmp::Data(DataAttribute::Value(vec![10, 42, 0, 0]))))));
        let multicast = cmp(8);
        assert!(multicast.iter().any(|a| matches!(a, ExpressionAttribute::Data(Expressions::Cmp(c))
            if c.contains(&Cmp::Op(Operator::NotEqual)) && c.contains(&Cmp::Data(DataAttribute::Value(vec![224, 0, 0, 0]))))));
        assert_eq!(cmp(9), vec![ExpressionAttribute::Name("masq".into())]);
    }
}
