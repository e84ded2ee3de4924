//! `rally chat`: a line chat with the other members of a room, each line sent peer to peer as a
//! reliable packet to every member.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use rally_client::net::{Net, NetConfig, NetEvent, SendPolicy};
use rally_proto::rooms::v1::CreateRoomRequest;
use tokio::io::AsyncBufReadExt as _;
use uuid::Uuid;

/// `rally chat` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    server: crate::server::ServerArgs,
    /// The local UDP address for peer-to-peer traffic (every interface by default).
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: std::net::SocketAddr,
    /// Your name (also picks a stable device account on this machine).
    #[arg(long)]
    user: String,
    /// The room to join (its id), or `new` to create one and print its id.
    #[arg(long)]
    room: String,
}

pub(crate) async fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let rally = args.server.connect().await?;
    let session = rally
        .device_login(&format!("rally-chat-device-{}", args.user), &args.user)
        .await
        .context("signing in")?;
    let rooms = session.rooms();
    let room = if args.room == "new" {
        let room = rooms
            .create_room(CreateRoomRequest {
                capacity: 16,
                ..Default::default()
            })
            .await?
            .room
            .context("the server returned no room")?;
        println!(
            "created room {} — others join with --room {}",
            room.room_id, room.room_id
        );
        room.room_id
    } else {
        rooms
            .join_room(&args.room)
            .await
            .context("joining the room")?;
        args.room.clone()
    };
    let mut config = NetConfig::default();
    config.transport.bind = args.bind;
    let net = Net::start(&session, config).await?;
    net.accept_for_current_room().await?;
    let mut names: HashMap<Uuid, String> = HashMap::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    println!(
        "chatting in {room} as {}; type lines, Ctrl-D to leave",
        args.user
    );
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) if !line.is_empty() => {
                    if line.len() > 1000 {
                        println!("(lines are at most 1000 bytes)");
                        continue;
                    }
                    net.send_packet_to_current_room(line.into_bytes(), SendPolicy::Reliable).await?;
                }
                Some(_) => {}
                None => break,
            },
            packet = net.recv() => {
                let Some(packet) = packet else { break };
                if !names.contains_key(&packet.sender) {
                    let room = rooms.get_room(&room).await?;
                    for member in room.members {
                        if let Ok(id) = Uuid::try_parse(&member.user_id) {
                            names.insert(id, member.display_name);
                        }
                    }
                }
                let name = names.get(&packet.sender).cloned().unwrap_or_else(|| packet.sender.to_string());
                println!("{name}: {}", String::from_utf8_lossy(&packet.data));
            }
            event = net.next_event() => {
                if let Some(NetEvent::PeerConnectRequest { user }) = event {
                    // Someone outside the room: chat is for members only.
                    net.close(user).await?;
                }
            }
        }
    }
    net.close_for_current_room().await?;
    net.shutdown();
    rooms.leave_room(&room).await?;
    Ok(ExitCode::SUCCESS)
}
