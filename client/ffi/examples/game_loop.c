/*
 * A game loop on Rally's C ABI, shaped like a Meta Platform SDK game: initialise, sign in,
 * meet in a room, connect peer to peer, and then once a frame pump the message queue, read
 * packets and send. Two instances play against each other:
 *
 *   game_loop http://127.0.0.1:7370 host /tmp/room.txt    creates a room, writes its id
 *   game_loop http://127.0.0.1:7370 join /tmp/room.txt    reads the id, joins, connects
 *
 * Each side sends RELIABLE_COUNT reliable packets (sizes from 1 byte to 60000) and
 * UNRELIABLE_COUNT unreliable ones, checks that the peer's reliable packets arrive complete,
 * intact and in order and that some unreliable ones arrive, pings the peer, and ends with a
 * handshake so that neither side leaves before the other has everything: DONE (after the last
 * data), ACK (of the peer's DONE), then the joiner's BYE, after which the host closes the
 * connection and the joiner waits to see it closed. Every wait has a deadline; exit status 0
 * means every check passed. Everything Rally returned is freed, and rally_Shutdown stops it.
 *
 * Environment: RALLY_EXAMPLE_TIMEOUT_S (seconds per phase, default 120), RALLY_LOG.
 */
#define _POSIX_C_SOURCE 200809L

#include "rally.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RELIABLE_COUNT 200u
#define UNRELIABLE_COUNT 300u
#define RELIABLE_PER_FRAME 8u
#define UNRELIABLE_PER_FRAME 3u
#define UNRELIABLE_SIZE 64u
#define LARGE_SIZE 60000u

enum { KIND_DATA = 'R', KIND_UNRELIABLE = 'U', KIND_DONE = 'D', KIND_ACK = 'A', KIND_BYE = 'B' };

typedef struct {
    const char *role;
    int host;
    rally_ID me, peer, room;
    int logged_in, in_room, room_ready, have_peer, connected, closed;
    rally_RequestID login_request, room_request, data_request, ping_request;
    uint32_t sent_reliable, sent_unreliable, refused_unreliable;
    uint32_t next_expected, unreliable_received;
    int sent_done, got_done, got_ack, sent_bye, got_bye, closing;
    double ping_ms;
    int pings;
    int failed;
    unsigned char buffer[LARGE_SIZE + 8];
} Game;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* One frame: the loop's pace, not a synchronisation (every wait is on a condition). */
static void next_frame(void) {
    struct timespec frame = {0, 2 * 1000 * 1000};
    nanosleep(&frame, NULL);
}

static void say(const Game *game, const char *format, ...) {
    va_list args;
    va_start(args, format);
    printf("[%s] ", game->role);
    vprintf(format, args);
    printf("\n");
    fflush(stdout);
    va_end(args);
}

static void fail(Game *game, const char *what) {
    say(game, "FAILED: %s (last error: %s)", what, rally_GetLastError());
    game->failed = 1;
}

static void id_text(rally_ID id, char text[RALLY_ID_STRING_SIZE]) {
    if (rally_ID_ToString(id, text, RALLY_ID_STRING_SIZE) == 0) {
        strcpy(text, "?");
    }
}

static uint32_t reliable_size(uint32_t seq) {
    return seq % 50 == 49 ? LARGE_SIZE : 1 + (seq * 7919u) % 2000u;
}

static unsigned char pattern(uint32_t seq, uint32_t i) { return (unsigned char)(seq * 31u + i * 7u); }

static void put_u32(unsigned char *at, uint32_t value) {
    for (int i = 0; i < 4; i++) at[i] = (unsigned char)(value >> (8 * i));
}

static uint32_t get_u32(const unsigned char *at) {
    return (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
}

static int send_control(Game *game, char kind) {
    unsigned char packet[1] = {(unsigned char)kind};
    if (!rally_Net_SendPacket(game->peer, sizeof packet, packet, rally_SendPolicy_Reliable)) {
        fail(game, "sending a control packet");
        return 0;
    }
    return 1;
}

/* Writes the room id for the joiner: to a temporary file first, then renamed into place. */
static int publish_room(Game *game, const char *path) {
    char id[RALLY_ID_STRING_SIZE], temporary[4096];
    id_text(game->room, id);
    snprintf(temporary, sizeof temporary, "%s.tmp", path);
    FILE *file = fopen(temporary, "w");
    if (!file) return 0;
    fprintf(file, "%s\n", id);
    if (fclose(file) != 0) return 0;
    return rename(temporary, path) == 0;
}

static int read_room(rally_ID *room, const char *path) {
    char text[64] = {0};
    FILE *file = fopen(path, "r");
    if (!file) return 0;
    int ok = fgets(text, sizeof text, file) != NULL;
    fclose(file);
    if (!ok) return 0;
    text[strcspn(text, "\r\n")] = '\0';
    return rally_ID_FromString(text, room);
}

static void on_room(Game *game, const rally_Message *message) {
    const rally_Room *room = rally_Message_GetRoom(message);
    char id[RALLY_ID_STRING_SIZE], owner[RALLY_ID_STRING_SIZE];
    game->room = rally_Room_GetID(room);
    id_text(game->room, id);
    id_text(rally_Room_GetOwnerID(room), owner);
    say(game, "%s room %s (owner %s, %zu of %u members)",
        rally_MessageType_ToString(rally_Message_GetType(message)), id, owner,
        rally_Room_GetMemberCount(room), rally_Room_GetCapacity(room));
    for (size_t i = 0; i < rally_Room_GetMemberCount(room); i++) {
        say(game, "  member %zu: %s", i, rally_Room_GetMemberDisplayName(room, i));
    }
}

static void on_result(Game *game, rally_Message *message) {
    rally_MessageType type = rally_Message_GetType(message);
    if (rally_Message_IsError(message)) {
        const rally_Error *error = rally_Message_GetError(message);
        say(game, "FAILED: %s: %s (code %d, rpc status %d)", rally_MessageType_ToString(type),
            rally_Error_GetMessage(error), rally_Error_GetCode(error),
            rally_Error_GetRpcStatus(error));
        game->failed = 1;
        return;
    }
    if (type == rally_MessageType_User_Login) {
        const rally_User *user = rally_Message_GetUser(message);
        char id[RALLY_ID_STRING_SIZE];
        game->me = rally_User_GetID(user);
        id_text(game->me, id);
        say(game, "signed in as %s (%s)", rally_User_GetDisplayName(user), id);
        game->logged_in = 1;
    } else if (type == rally_MessageType_Room_Create) {
        on_room(game, message);
        rally_KeyValuePair data[] = {{"map", "arena"}, {"mode", "duel"}};
        game->data_request = rally_Room_UpdateDataStore(game->room, data, 2);
        if (game->data_request == 0) fail(game, "rally_Room_UpdateDataStore");
    } else if (type == rally_MessageType_Room_UpdateDataStore) {
        say(game, "room data set: map=%s", rally_Room_GetDataValue(rally_Message_GetRoom(message), "map"));
        if (!rally_Net_AcceptForCurrentRoom()) fail(game, "rally_Net_AcceptForCurrentRoom");
        game->in_room = 1;
    } else if (type == rally_MessageType_Room_Join) {
        const rally_Room *room = rally_Message_GetRoom(message);
        on_room(game, message);
        const char *map = rally_Room_GetDataValue(room, "map");
        if (!map || strcmp(map, "arena") != 0) fail(game, "the room's data (map=arena)");
        game->peer = rally_Room_GetOwnerID(room);
        game->have_peer = 1;
        game->in_room = 1;
        if (!rally_Net_AcceptForCurrentRoom()) fail(game, "rally_Net_AcceptForCurrentRoom");
        if (rally_Net_Connect(game->peer) != RALLY_OK) fail(game, "rally_Net_Connect");
    }
}

static void on_networking(Game *game, rally_Message *message) {
    rally_MessageType type = rally_Message_GetType(message);
    const rally_NetworkingPeer *peer = rally_Message_GetNetworkingPeer(message);
    rally_ID who = rally_NetworkingPeer_GetID(peer);
    char id[RALLY_ID_STRING_SIZE];
    id_text(who, id);
    if (type == rally_MessageType_Notification_Networking_PeerConnectRequest) {
        say(game, "connect request from %s", id);
        if (rally_Net_Accept(who) != RALLY_OK) fail(game, "rally_Net_Accept");
        return;
    }
    if (type == rally_MessageType_Notification_Networking_ConnectionFailed) {
        say(game, "connection attempt with %s failed: %s", id,
            rally_Error_GetMessage(rally_Message_GetError(message)));
        return;
    }
    rally_PeerState state = rally_NetworkingPeer_GetState(peer);
    say(game, "connection with %s: state %u", id, state);
    if (state == rally_PeerState_Connected) {
        if (!game->have_peer) {
            game->peer = who;
            game->have_peer = 1;
        }
        if (rally_ID_Equals(who, game->peer)) game->connected = 1;
    } else if ((state == rally_PeerState_Closed || state == rally_PeerState_Timeout) &&
               game->have_peer && rally_ID_Equals(who, game->peer)) {
        game->closed = 1;
        if (!game->closing && !(game->got_done && game->got_ack)) fail(game, "the connection ended early");
    }
}

static void pump_messages(Game *game) {
    rally_Message *message;
    while ((message = rally_PopMessage()) != NULL) {
        rally_MessageType type = rally_Message_GetType(message);
        switch (type) {
        case rally_MessageType_Notification_Networking_ConnectionStateChange:
        case rally_MessageType_Notification_Networking_PeerConnectRequest:
        case rally_MessageType_Notification_Networking_ConnectionFailed:
            on_networking(game, message);
            break;
        case rally_MessageType_Notification_Networking_PingResult: {
            const rally_PingResult *ping = rally_Message_GetPingResult(message);
            if (rally_PingResult_GetID(ping) != game->ping_request) {
                fail(game, "a ping result with an unknown id");
            } else if (!rally_PingResult_IsTimeout(ping)) {
                game->ping_ms = (double)rally_PingResult_GetPingTimeUsec(ping) / 1000.0;
                game->pings++;
            }
            break;
        }
        default:
            on_result(game, message);
            break;
        }
        rally_FreeMessage(message);
    }
}

static void on_packet(Game *game, const rally_Packet *packet) {
    const unsigned char *bytes = rally_Packet_GetBytes(packet);
    size_t size = rally_Packet_GetSize(packet);
    int reliable = rally_Packet_GetSendPolicy(packet) == rally_SendPolicy_Reliable;
    if (!game->have_peer || !rally_ID_Equals(rally_Packet_GetSenderID(packet), game->peer) || size == 0) {
        fail(game, "a packet from an unexpected sender, or empty");
        return;
    }
    switch (bytes[0]) {
    case KIND_DATA: {
        uint32_t seq = size >= 5 ? get_u32(bytes + 1) : UINT32_MAX;
        if (!reliable || seq != game->next_expected || size != 5 + reliable_size(seq)) {
            fail(game, "a reliable packet out of order or of the wrong size");
            return;
        }
        for (uint32_t i = 0; i < reliable_size(seq); i++) {
            if (bytes[5 + i] != pattern(seq, i)) {
                fail(game, "a reliable packet with corrupted bytes");
                return;
            }
        }
        game->next_expected++;
        break;
    }
    case KIND_UNRELIABLE:
        if (reliable || size != 5 + UNRELIABLE_SIZE || bytes[5] != pattern(get_u32(bytes + 1), 0)) {
            fail(game, "a malformed unreliable packet");
            return;
        }
        game->unreliable_received++;
        break;
    case KIND_DONE:
        if (game->next_expected != RELIABLE_COUNT) {
            fail(game, "DONE before every reliable packet");
            return;
        }
        game->got_done = 1;
        send_control(game, KIND_ACK);
        break;
    case KIND_ACK:
        game->got_ack = 1;
        break;
    case KIND_BYE:
        game->got_bye = 1;
        break;
    default:
        fail(game, "a packet of an unknown kind");
    }
}

static void read_packets(Game *game) {
    rally_Packet *packet;
    while ((packet = rally_Net_ReadPacket()) != NULL) {
        on_packet(game, packet);
        rally_Packet_Free(packet);
    }
}

static void send_frame(Game *game) {
    for (uint32_t n = 0; n < RELIABLE_PER_FRAME && game->sent_reliable < RELIABLE_COUNT; n++) {
        uint32_t seq = game->sent_reliable, size = reliable_size(seq);
        game->buffer[0] = KIND_DATA;
        put_u32(game->buffer + 1, seq);
        for (uint32_t i = 0; i < size; i++) game->buffer[5 + i] = pattern(seq, i);
        if (!rally_Net_SendPacket(game->peer, 5 + size, game->buffer, rally_SendPolicy_Reliable)) {
            if (rally_GetLastErrorCode() == RALLY_ERROR_SEND_BUFFER_FULL) break; /* next frame */
            fail(game, "rally_Net_SendPacket (reliable)");
            return;
        }
        game->sent_reliable++;
    }
    for (uint32_t n = 0; n < UNRELIABLE_PER_FRAME && game->sent_unreliable < UNRELIABLE_COUNT; n++) {
        unsigned char packet[5 + UNRELIABLE_SIZE];
        uint32_t seq = game->sent_unreliable++;
        packet[0] = KIND_UNRELIABLE;
        put_u32(packet + 1, seq);
        for (uint32_t i = 0; i < UNRELIABLE_SIZE; i++) packet[5 + i] = pattern(seq, i);
        if (!rally_Net_SendPacket(game->peer, sizeof packet, packet, rally_SendPolicy_Unreliable)) {
            game->refused_unreliable++; /* not taken (too large, not signed in): counted */
        }
    }
    if (game->sent_reliable == RELIABLE_COUNT && !game->sent_done) {
        game->sent_done = send_control(game, KIND_DONE);
    }
}

/* Runs frames until `done` holds, a check fails, or the deadline passes. */
static int run_until(Game *game, int (*done)(const Game *), const char *what, double timeout) {
    double deadline = now_s() + timeout;
    while (!game->failed && !done(game)) {
        if (now_s() > deadline) {
            say(game, "FAILED: timed out waiting for %s", what);
            game->failed = 1;
            break;
        }
        pump_messages(game);
        if (game->connected) {
            read_packets(game);
            if (!game->closing) send_frame(game);
        }
        next_frame();
    }
    return !game->failed;
}

static int is_logged_in(const Game *game) { return game->logged_in; }
static int is_in_room(const Game *game) { return game->in_room; }
static int is_connected(const Game *game) { return game->connected; }
static int is_closed(const Game *game) { return game->closed; }
static int host_finished(const Game *game) {
    return game->got_done && game->got_ack && game->got_bye && game->pings > 0;
}
static int joiner_finished(const Game *game) {
    return game->got_done && game->got_ack && game->pings > 0;
}

static int play(Game *game, const char *room_path, double timeout) {
    char device[96];
    snprintf(device, sizeof device, "c-example-%s-%ld-%ld", game->role, (long)getpid(), (long)time(NULL));
    game->login_request = rally_User_LoginWithDevice(device, game->host ? "C host" : "C joiner");
    if (game->login_request == 0) {
        fail(game, "rally_User_LoginWithDevice");
        return 0;
    }
    if (!run_until(game, is_logged_in, "sign-in", timeout)) return 0;

    if (game->host) {
        game->room_request = rally_Room_Create(2, rally_RoomVisibility_Private, rally_RoomJoinPolicy_Open);
        if (game->room_request == 0 || !run_until(game, is_in_room, "the room", timeout)) return 0;
        if (!publish_room(game, room_path)) {
            fail(game, "writing the room file");
            return 0;
        }
    } else {
        double deadline = now_s() + timeout;
        while (!read_room(&game->room, room_path)) { /* the host writes it when its room is ready */
            if (now_s() > deadline) {
                fail(game, "the room file");
                return 0;
            }
            next_frame();
        }
        game->room_request = rally_Room_Join(game->room);
        if (game->room_request == 0 || !run_until(game, is_in_room, "joining the room", timeout)) return 0;
    }

    if (!run_until(game, is_connected, "the peer-to-peer connection", timeout)) return 0;
    say(game, "connected peer to peer; sending");
    game->ping_request = rally_Net_Ping(game->peer);
    if (game->ping_request == 0) fail(game, "rally_Net_Ping");

    if (game->host) {
        if (!run_until(game, host_finished, "the exchange", timeout)) return 0;
        game->closing = 1;
        if (rally_Net_Close(game->peer) != RALLY_OK) fail(game, "rally_Net_Close");
    } else {
        if (!run_until(game, joiner_finished, "the exchange", timeout)) return 0;
        game->closing = 1;
        game->sent_bye = send_control(game, KIND_BYE);
    }
    if (!run_until(game, is_closed, "the connection to close", timeout)) return 0;
    return !game->failed;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[2], "host") != 0 && strcmp(argv[2], "join") != 0)) {
        fprintf(stderr, "usage: %s SERVER_URL host|join ROOM_FILE\n", argv[0]);
        return 2;
    }
    static Game game;
    game.role = argv[2];
    game.host = strcmp(argv[2], "host") == 0;
    const char *timeout_text = getenv("RALLY_EXAMPLE_TIMEOUT_S");
    double timeout = timeout_text ? atof(timeout_text) : 120.0;

    rally_KeyValuePair options[] = {
        {"bind", "127.0.0.1:0"},
        /* Generous for slow runs (valgrind makes everything 20 to 50 times slower). */
        {"connect_timeout_ms", "60000"},
        {"handshake_timeout_ms", "30000"},
    };
    if (rally_InitWithOptions(argv[1], options, sizeof options / sizeof options[0]) != RALLY_OK) {
        fprintf(stderr, "rally_InitWithOptions: %s\n", rally_GetLastError());
        return 1;
    }
    double started = now_s();
    int ok = play(&game, argv[3], timeout);
    if (rally_Shutdown() != RALLY_OK) {
        fprintf(stderr, "rally_Shutdown: %s\n", rally_GetLastError());
        ok = 0;
    }
    if (ok && game.unreliable_received == 0) {
        say(&game, "FAILED: no unreliable packet arrived");
        ok = 0;
    }
    say(&game, "%s: reliable %u/%u received in order and intact (sent %u), unreliable %u "
               "received (sent %u, %u refused locally), ping %.2f ms, %.1f s",
        ok ? "PASSED" : "FAILED", game.next_expected, RELIABLE_COUNT, game.sent_reliable,
        game.unreliable_received, game.sent_unreliable, game.refused_unreliable, game.ping_ms,
        now_s() - started);
    return ok ? 0 : 1;
}
