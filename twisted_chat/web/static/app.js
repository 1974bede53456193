// twisted-chat web client. Plain JavaScript, no build step, no dependencies.
//
// The page speaks chat/1 over a WebSocket at /chat: each text message is one
// line, in both directions (see docs/web.md). Everything that comes from the
// network is put into the page with textContent / createTextNode, never as
// HTML: a nick or message like <img src=x onerror=alert(1)> shows literally.
"use strict";

(() => {
  // -- small helpers ---------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // chat/1: VERB, then single-word arguments separated by one or more spaces,
  // then free text (verbatim from its first non-space character).
  // parse(line, n) gives the first n words (the verb counts) and the rest.
  function parse(line, words) {
    let rest = line;
    const out = [];
    for (let i = 0; i < words; i++) {
      rest = rest.replace(/^ +/, "");
      const space = rest.indexOf(" ");
      if (space < 0) {
        out.push(rest);
        rest = "";
      } else {
        out.push(rest.slice(0, space));
        rest = rest.slice(space + 1);
      }
    }
    out.push(rest.replace(/^ +/, ""));
    return out;
  }

  const key = (nick) => nick.toLowerCase();
  const NICK_RE = /^[A-Za-z][A-Za-z0-9_-]{0,23}$/;

  function colorFor(nick) {
    let h = 0;
    for (const ch of key(nick)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${h % 360}, 55%, 45%)`;
  }

  // One formatter for every time shown: toLocaleTimeString with options
  // makes a new one per call, which was most of a join's cost in a busy
  // lobby (2,700 joins and leaves: about 0.4 s of 0.65 s).
  const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
  const localTime = (ts) => TIME.format(ts);

  function dayLabel(ts) {
    const today = new Date();
    const yesterday = new Date(today.getTime() - 86400000);
    if (ts.toDateString() === today.toDateString()) return "Today";
    if (ts.toDateString() === yesterday.toDateString()) return "Yesterday";
    return ts.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
  }

  // Bidi controls (U+200E/F, U+202A-202E, U+2066-2069) reorder the text
  // after them: in a link they make it show another address than it goes
  // to ("https://files.example/\u202Efdp.exe" showed as ".../exe.pdf"). A
  // link shows each as its code point, "[U+202E]", and is isolated (dir):
  // such a control before it does not reorder it either.
  const BIDI = /[\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
  const codePoint = (c) => `[U+${c.codePointAt(0).toString(16).toUpperCase()}]`;
  const shownBidi = (text) => text.replace(BIDI, codePoint);
  // In a message's text, the embeddings, overrides and isolates (U+202A-202E,
  // U+2066-2069), which reverse or reorder what follows them
  // ("rtl: \u202Eevil.exe" showed as "rtl: exe.live"), are shown as their
  // code points too, as the terminal client shows them as escapes; the marks
  // (U+200E/F), which Arabic and Hebrew text use, are kept. The text is
  // isolated as well (.msg-text: unicode-bidi: isolate).
  const OVERRIDES = /[\u202A-\u202E\u2066-\u2069]/g;
  // A character keeps at most 4 combining marks, as in the terminal client
  // (sanitize.py, MAX_MARKS: enough for Vietnamese, Hebrew points or Thai
  // tones): a pile of hundreds ("zalgo") drew over the messages around it.
  // The joiners ZWJ and ZWNJ count among them, as the terminal counts them
  // (a pile of them between accents kept every accent).
  const MARK_PILES = /([\p{Mn}\p{Me}\u200C\u200D]{4})[\p{Mn}\p{Me}\u200C\u200D]+/gu;
  const fewerMarks = (text) => text.replace(MARK_PILES, "$1");
  const shownOverrides = (text) => fewerMarks(text.replace(OVERRIDES, codePoint));

  // Text with http(s) links made clickable; both built as DOM nodes.
  function richText(text) {
    const frag = document.createDocumentFragment();
    const re = /\bhttps?:\/\/[^\s<>"']+/g;
    let last = 0;
    for (const m of text.matchAll(re)) {
      let url = m[0].replace(/[.,;:!?)\]]+$/, "");
      if (m.index > last) frag.append(document.createTextNode(shownOverrides(text.slice(last, m.index))));
      const a = el("a", null, fewerMarks(shownBidi(url)));
      a.dir = "ltr";
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      frag.append(a);
      last = m.index + url.length;
    }
    if (last < text.length) frag.append(document.createTextNode(shownOverrides(text.slice(last))));
    return frag;
  }

  // The nick last used is remembered in the browser, when it lets the page:
  // with site data blocked, localStorage throws (SecurityError), and the
  // page works the same, remembering nothing.
  function stored(name) {
    try {
      return localStorage.getItem(name);
    } catch (e) {
      return null;
    }
  }

  function store(name, value) {
    try {
      localStorage.setItem(name, value);
    } catch (e) {
      // not remembered
    }
  }

  // -- state -------------------------------------------------------------------

  const state = {
    ws: null,
    me: null, // the nick the server accepted
    wanted: stored("twisted-chat.nick") || "",
    // {nick, value}: answers PASS <nick> by itself for that nick only (a
    // rejoin, a Join on a closed prompt): the login's, or the last REGISTERED one.
    password: null,
    accountRequest: null, // {verb, password}: REGISTER / PASSWD sent, its answer awaited
    autoJoin: false, // rejoin under `wanted` when the server asks for a nick
    // The server closed the nick prompt for --nick-timeout (nobody used it):
    // not a disconnection; the next use of the prompt connects again.
    idle: false,
    queued: null, // "nick" | "pass": submitted while not connected, sent on the prompt
    // After RETRY bad-password the page sends NICK again itself, and the
    // password is asked for again (as the terminal client asks) when the
    // server's PASS comes: {error, declined} until then, null otherwise.
    // error: what to keep shown; declined: the user chose another nickname
    // meanwhile (that PASS is not a prompt any more).
    repass: null,
    online: false,
    leaving: false, // we sent BYE: do not reconnect
    byeReason: null,
    byeText: "",
    lastLogin: null, // "NICK" | "PASS": the last of them this connection sent
    // {nick, until}: the server refused too many failed logins for that nick
    // (BYE flood after a PASS): no connection for it until then (loginRefused).
    loginWait: null,
    attempt: 0,
    retryTimer: null, // the next connection's timer (or the end of a loginWait)
    countdown: null, // the banner's countdown to it (countDown)
    takenRetries: 0,
    unavailableRetries: 0, // RETRY unavailable answers in a row
    floodRetries: 0, // ERROR flood answers to the page's NICK in a row (nickFlooded)
    // The page waits to send the NICK the server did not look at again:
    // a connection closed meanwhile (its --nick-timeout) is not a prompt
    // left open, and the wait's end connects again.
    floodWait: false,
    users: new Map(), // key -> {nick, state, row: its row in the user list}
    // People online with no row: past USERS_MAX, or not a nick. Counted, so
    // that the count says who is online, not how many rows there are.
    unlisted: 0,
    pendingList: null, // the user list coming, until its USERS (freshList)
    // The conversation where the user typed /users (or /who): the next user
    // list is printed there (the server's answers come in order).
    listFor: null,
    partner: null, // nick while in a private conversation
    pendingTo: null, // nick we invited
    invites: new Map(), // inviter key -> card element
    convs: new Map(), // "lobby" | "dm:<key>" -> conversation
    active: "lobby",
    sent: [],
    recall: -1,
    draft: "",
    // "ts nick text" -> how many lobby messages with these three the page
    // shows: identical lines (a "+1" pasted three times in one millisecond)
    // are distinct messages, and each counts. Kept for the last MAX_ROWS
    // lobby messages (shownOrder: [id, time] oldest first); shownFloor: the
    // time of the newest one forgotten (a replayed line up to it was shown).
    shownLobby: new Map(),
    shownOrder: [],
    shownFloor: -Infinity,
    // Lobby notices (joins, leaves) while paired: shown when the pair ends,
    // in time order among the lobby lines replayed then ({ts, text}); the
    // last MAX_ROWS of them, and how many older ones went (heldDropped).
    heldNotices: [],
    heldDropped: 0,
    // Those shown at a disconnection, and its "Disconnected" ({ts, row}): a
    // lobby line older than one, replayed by the next READY block, goes
    // before it (lobbyMessage).
    shownAtLoss: [],
    // The server's clock at the page's performance.now() origin (ms; null:
    // not known), by the live lines of this connection: at most the least
    // delayed one's lead, so its time of a disconnection (closed()) is
    // never later than the server's. The page's monotonic clock, not its
    // wall clock: a step of that (NTP, by hand) would move it. lastAhead:
    // the last live line's lead (lossTime).
    serverAhead: null,
    lastAhead: null,
    // The partner whose pair just ended, told in the lobby once the
    // replay after UNPAIRED is shown (at its user list).
    unpairedFrom: null,
    // While a new connection's READY block replays the history: what the
    // page showed before it, each count consumed by one replayed line.
    replaySkip: null,
    lastLine: 0, // when a line was last heard (Date.now(): the keepalive)
    heardAt: 0, // the same, by performance.now() (lossTime)
    keepalive: null,
    rosterTimer: null,
    serverName: "",
  };

  // -- conversations -----------------------------------------------------------

  function conversation(id, peer) {
    let conv = state.convs.get(id);
    if (conv) return conv;
    const pane = el("div", "pane");
    pane.dataset.conv = id;
    pane.hidden = true;
    $("messages").append(pane);
    // draft: what was typed in its composer and not sent, kept while
    // another conversation is shown; rows: its messages and notices.
    conv = { id, peer: peer || null, pane, unread: 0, lastFrom: null, lastTime: 0, lastDay: null,
      item: null, draft: "", rows: 0 };
    state.convs.set(id, conv);
    if (id === "lobby") {
      const empty = el("div", "empty", "No messages yet. Say hello!");
      pane.append(empty);
      conv.empty = empty;
    }
    renderConvList();
    return conv;
  }

  const lobby = () => conversation("lobby");
  const dmId = (nick) => "dm:" + key(nick);

  function dm(nick) {
    const conv = conversation(dmId(nick), nick);
    conv.peer = nick; // keep the owner's spelling
    return conv;
  }

  function atBottom(container) {
    return container.scrollHeight - container.scrollTop - container.clientHeight < 60;
  }

  // Rows (messages and notices) a conversation keeps: past it, the oldest
  // go, with their day separators (docs/web.md). A page open for days, or
  // under a burst, stays as fast as a new one.
  const MAX_ROWS = 2000;
  // Invitations to the user kept open, each a card (the terminal client's
  // Pairing.INVITES_MAX): a hostile server's are countless.
  const INVITES_MAX = 100;
  // People in the user list (the terminal client's Roster.USERS_MAX, five
  // times the server's default --max-clients): a hostile server's are
  // countless, and each row is a few DOM nodes.
  const USERS_MAX = 50000;

  // Whether the view follows the bottom, decided by the first line of a
  // frame added to the conversation shown, and scrolled once by the frame:
  // the layout is read once a frame, not once a line (a line cost 35 ms
  // at 14,500 rows when each one read it).
  let stick = null;
  function follow(box) {
    if (stick !== null) return;
    stick = atBottom(box);
    requestAnimationFrame(() => {
      if (stick) box.scrollTop = box.scrollHeight;
      stick = null;
    });
  }

  // The oldest rows over MAX_ROWS leave; the day separator of the oldest
  // row kept stays above it, and that row shows its author.
  function trim(conv) {
    const pane = conv.pane;
    let day = null;
    while (conv.rows > MAX_ROWS && pane.firstElementChild) {
      const node = pane.firstElementChild;
      if (node.classList.contains("day")) day = node;
      else conv.rows -= 1;
      node.remove();
    }
    const first = pane.firstElementChild;
    if (!first || first.classList.contains("day")) return;
    if (day) pane.prepend(day);
    if (first.classList.contains("msg")) first.classList.add("first");
  }

  // `node` goes last, or before the row `before` (a replayed line put
  // back among notices shown earlier: laterNoticeShown), each under its
  // day's separator. Rows and separators carry their day (data-day).
  function append(conv, node, ts, countsUnread, before = null) {
    if (conv.empty) {
      conv.empty.remove();
      conv.empty = null;
    }
    if (conv.id === state.active) follow($("messages"));
    const day = ts.toDateString();
    node.dataset.day = day;
    if (before) {
      putBefore(node, ts, before);
    } else {
      if (day !== conv.lastDay) {
        conv.pane.append(daySeparator(ts));
        conv.lastDay = day;
        conv.lastFrom = null;
      }
      conv.pane.append(node);
    }
    conv.rows += 1;
    if (conv.rows > MAX_ROWS) trim(conv);
    if (conv.id === state.active) {
      if (countsUnread && document.hidden) bumpTitle(1);
    } else if (countsUnread) {
      if (conv.peer) announce(`New message from ${conv.peer}`);
      conv.unread += 1;
      bumpTitle(1);
      renderConvList();
    }
  }

  function daySeparator(ts) {
    const separator = el("div", "day", dayLabel(ts));
    separator.dataset.day = ts.toDateString();
    return separator;
  }

  // `node`, of `ts`'s day, goes before the row `before` (a later one, the
  // rows being in time order): above that row's day separator if that
  // starts a later day, and under a separator of its own if the row above
  // it is of an earlier day (a pair across midnight). A `before` of
  // another day that had no separator of its own ("Disconnected", on the
  // page's clock, below a line of the server's next day) gets one back.
  function putBefore(node, ts, before) {
    const day = node.dataset.day;
    const above = before.previousElementSibling;
    const laterDay = above && above.classList.contains("day") && above.dataset.day !== day;
    (laterDay ? above : before).before(node);
    const prev = node.previousElementSibling;
    if (!prev || prev.dataset.day !== day) node.before(daySeparator(ts));
    if (!laterDay && before.dataset.day !== day) before.before(daySeparator(new Date(before.dataset.day)));
  }

  function addMessage(conv, ts, from, text, before = null) {
    const first = !!before || conv.lastFrom !== key(from) || ts - conv.lastTime > 5 * 60 * 1000;
    const row = el("div", "msg" + (first ? " first" : "") + (state.me && key(from) === key(state.me) ? " mine" : ""));
    const avatar = el("div", "avatar", from.slice(0, 1));
    avatar.setAttribute("aria-hidden", "true"); // the nick follows: not read twice
    avatar.style.background = colorFor(from);
    const body = el("div", "msg-body");
    const head = el("div", "msg-head");
    const nick = el("span", "nick", from);
    nick.style.color = colorFor(from);
    const time = el("time", "time", localTime(ts));
    time.dateTime = ts.toISOString();
    time.title = ts.toLocaleString();
    head.append(nick, time);
    const textNode = el("div", "msg-text");
    textNode.append(richText(text));
    body.append(head, textNode);
    row.append(avatar, body);
    row.title = ts.toLocaleString();
    const mine = state.me && key(from) === key(state.me);
    append(conv, row, ts, !mine, before);
    if (before) return; // the last row is still the one after it
    conv.lastFrom = key(from);
    conv.lastTime = ts.getTime();
  }

  function notice(conv, text, opts = {}) {
    const ts = opts.ts || new Date();
    const row = el("div", "notice" + (opts.error ? " error" : ""));
    if (!opts.error) {
      const time = el("time", "time", localTime(ts));
      time.title = ts.toLocaleString();
      row.append(time);
    }
    row.append(document.createTextNode(text));
    append(conv, row, ts, false);
    conv.lastFrom = null;
    return row;
  }

  const current = () => state.convs.get(state.active) || lobby();

  function show(id, focus = true) {
    const conv = state.convs.get(id) || lobby();
    // What is being typed belongs to the conversation it was typed in: a
    // switch, the user's or one PAIRED or UNPAIRED makes, keeps it there and
    // brings back the shown one's. A private reply never lands in the
    // lobby's composer, nor a lobby line in the partner's.
    const input = $("composer-input");
    const was = state.convs.get(state.active);
    if (was && was !== conv) {
      was.draft = input.value;
      input.value = conv.draft;
      conv.draft = "";
      state.recall = -1;
    }
    state.active = conv.id;
    for (const c of state.convs.values()) c.pane.hidden = c !== conv;
    if (conv.unread) {
      bumpTitle(-conv.unread);
      conv.unread = 0;
    }
    renderConvList();
    renderHeader();
    setMenu(false);
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
    if (state.online && focus) $("composer-input").focus();
  }

  let titleUnread = 0;
  function bumpTitle(n) {
    titleUnread = Math.max(0, titleUnread + n);
    const base = state.serverName || "twisted-chat";
    document.title = (titleUnread ? `(${titleUnread}) ` : "") + base;
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && current().unread === 0) {
      titleUnread = [...state.convs.values()].reduce((n, c) => n + c.unread, 0);
      bumpTitle(0);
    }
    if (!document.hidden) pollRoster(); // not asked while hidden: now, if due
  });

  // -- sidebar and header ------------------------------------------------------

  // At phone width the sidebar is a drawer, moved off screen when closed:
  // closed, it is also inert (out of the Tab order and the accessibility
  // tree), and the ☰ button says whether it is open (aria-expanded).
  const phoneWidth = window.matchMedia("(max-width: 720px)");
  function setMenu(open) {
    $("app").classList.toggle("menu-open", open);
    $("sidebar").inert = phoneWidth.matches && !open;
    $("menu-button").setAttribute("aria-expanded", String(open));
  }
  phoneWidth.addEventListener("change", () => setMenu($("app").classList.contains("menu-open")));

  // Said to a screen reader (a polite live region): a DM in a conversation
  // not shown changes nothing else it would read out.
  function announce(text) {
    $("announce").textContent = text;
  }

  function convItem(conv, label, prefix) {
    const li = el("li", conv.id === state.active ? "active" : "");
    li.dataset.conv = conv.id;
    if (conv.unread) li.classList.add("unread");
    li.append(el("span", "prefix", prefix));
    li.append(el("span", "conv-label", label));
    if (conv.peer && state.partner && key(conv.peer) === key(state.partner)) {
      li.append(el("span", "tag", "private"));
    }
    if (conv.unread) li.append(el("span", "badge", String(conv.unread)));
    activate(li, () => show(conv.id));
    return li;
  }

  // A list item that works like a button, from the mouse or the keyboard.
  function activate(li, action) {
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    li.addEventListener("click", action);
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        action();
      }
    });
  }

  // The sidebar's lists are built anew on a change (an unread line, a whole
  // user list; a join or a leave changes one row: putUser, dropUser): the
  // entry with the keyboard focus keeps it, in its new element, rather than
  // the focus falling back to the page's start.
  function keepFocus(list, attr, rebuild) {
    const had = document.activeElement;
    const value = had && list.contains(had) ? had.dataset[attr] : undefined;
    rebuild();
    if (value === undefined) return;
    for (const li of list.querySelectorAll("li")) {
      if (li.dataset[attr] === value) {
        li.focus();
        return;
      }
    }
  }

  function renderConvList() {
    keepFocus($("sidebar"), "conv", buildConvList);
  }

  function buildConvList() {
    const channels = $("channel-list");
    const dms = $("dm-list");
    channels.replaceChildren();
    dms.replaceChildren();
    for (const conv of state.convs.values()) {
      if (conv.id === "lobby") channels.append(convItem(conv, "lobby", "#"));
      else dms.append(convItem(conv, conv.peer, "@"));
    }
    if (!dms.children.length) dms.append(el("li", "hint", "Pick someone under Online to message them."));
  }

  // The user list: rebuilt from a whole list (USERS), otherwise kept one
  // row at a time (JOINED, LEFT, someone paired): a rebuild per join took
  // seconds in a lobby of thousands. In order of the nick as lowercase
  // (byNick: localeCompare's order). The list's rows are its one order;
  // each entry of state.users holds its row (row).
  const collator = new Intl.Collator();
  const byNick = (a, b) => collator.compare(a, b);

  function renderUsers() {
    keepFocus($("user-list"), "nick", buildUsers);
    usersChanged();
  }

  // A join or a leave changes the count, in the sidebar and in the lobby's
  // header, and whether a DM's peer is online: drawn once an animation
  // frame, not once a line (a burst of 200 JOINED drew the header 200
  // times, each time finding .main past every row of the user list).
  let usersFrame = null;
  function usersChanged() {
    if (usersFrame !== null) return;
    usersFrame = requestAnimationFrame(() => {
      usersFrame = null;
      $("user-count").textContent = state.online ? `— ${onlineCount()}` : "— not connected";
      const more = $("users-more");
      more.hidden = !state.online || !state.unlisted; // not live offline, as the count
      more.textContent = `${state.unlisted.toLocaleString("en")} more online, not listed.`;
      renderHeader();
    });
  }

  // How many are online: the rows, and those the list could not keep.
  const onlineCount = () => state.users.size + state.unlisted;

  // Once the page is not connected (a lost connection, /quit), the user
  // list is not live: it stays as it was, greyed, with a note, and nobody
  // in it, the page's own user included, is shown as online, until the page
  // is back in the chat (joined; the new connection's USERS redraws it).
  function usersLive(live) {
    $("user-list").classList.toggle("stale", !live);
    $("users-note").hidden = live;
    const ownDot = document.querySelector(".me .dot");
    ownDot.classList.toggle("online", live);
    ownDot.classList.toggle("offline", !live);
    usersChanged();
  }

  function buildUsers() {
    const order = [...state.users.keys()].sort(byNick);
    $("user-list").replaceChildren(...order.map((k) => {
      const user = state.users.get(k);
      user.row = userRow(user);
      return user.row;
    }));
  }

  function userRow(user) {
    const isMe = state.me && key(user.nick) === key(state.me);
    const li = el("li", "user");
    li.dataset.nick = user.nick;
    li.append(el("span", "dot " + (user.state === "paired" ? "paired" : "online")));
    li.append(el("span", "conv-label", user.nick));
    if (user.state === "paired") li.append(el("span", "tag", "paired"));
    if (isMe) li.append(el("span", "you", "you"));
    li.title = user.state === "paired" ? `${user.nick} is in a private conversation` : `Message ${user.nick}`;
    if (!isMe) activate(li, () => show(dm(user.nick).id));
    return li;
  }

  // The row k goes before (null: at the end), found in the list's rows.
  function rowAfter(k) {
    const rows = $("user-list").children;
    let lo = 0;
    let hi = rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (byNick(key(rows[mid].dataset.nick), k) < 0) lo = mid + 1;
      else hi = mid;
    }
    return rows[lo] || null;
  }

  // `user` is in the lobby now (JOINED), or its row changes (paired): its
  // row alone is made, and put in its place.
  function putUser(user) {
    const k = key(user.nick);
    const old = state.users.get(k)?.row;
    state.users.set(k, user);
    user.row = userRow(user);
    if (old) {
      const focused = document.activeElement === old;
      old.replaceWith(user.row);
      if (focused) user.row.focus();
    } else {
      $("user-list").insertBefore(user.row, rowAfter(k));
    }
    usersChanged();
  }

  // `nick` left: its row goes.
  function dropUser(nick) {
    const k = key(nick);
    state.users.get(k)?.row?.remove();
    state.users.delete(k);
    usersChanged();
  }

  // Found once: document.querySelector(".main") walks the sidebar's user
  // list first (it comes before), every row of it.
  const mainPane = document.querySelector(".main");

  function renderHeader() {
    drawHeader();
    offlineControls();
  }

  // While not connected (the banner says why, and counts down to the next
  // attempt), every control that sends is disabled, and says why on itself
  // (its title, its description for a screen reader: the banner's text, a
  // live region): a click did nothing, silently. Nothing is held to be sent
  // later: once connected again, the user decides anew.
  function offlineControls() {
    const off = !state.online;
    const why = state.leaving ? "Not connected: you left the chat." : "Not connected: reconnecting…";
    const input = $("composer-input");
    if (off) input.placeholder = why;
    const controls = [$("invite-button"), $("leave-button"), ...$("invitations").querySelectorAll("button")];
    for (const button of controls) {
      button.disabled = off;
      if (off) {
        button.title = why;
        button.setAttribute("aria-describedby", "banner-text");
      } else {
        button.removeAttribute("title");
        button.removeAttribute("aria-describedby");
      }
    }
    // Send goes with its message box (disabled in the lobby while paired,
    // or for a peer who is offline, too).
    $("send-button").disabled = input.disabled;
  }

  function drawHeader() {
    const conv = current();
    const name = $("conv-name");
    const topic = $("conv-topic");
    const invite = $("invite-button");
    const leave = $("leave-button");
    const input = $("composer-input");
    const main = mainPane;
    invite.hidden = true;
    leave.hidden = true;
    main.classList.remove("private");
    input.disabled = !state.online;
    if (conv.id === "lobby") {
      name.textContent = "# lobby";
      topic.textContent = state.partner
        ? `You are in a private conversation with ${state.partner}; the lobby's messages, joins and leaves will be shown when you leave it.`
        : `Everyone on ${state.serverName || "this server"} · ${state.online ? `${onlineCount()} online` : "not connected"}`;
      input.placeholder = state.partner ? "Leave the private conversation to write in the lobby" : "Message #lobby";
      if (state.partner) input.disabled = true;
      return;
    }
    const peer = conv.peer;
    const online = state.users.has(key(peer));
    const isPartner = state.partner && key(state.partner) === key(peer);
    if (isPartner) {
      main.classList.add("private");
      // At phone width the name comes first ("carol (private)", "Leave"):
      // the long title was cut before it.
      name.replaceChildren(el("span", "wide", "Private conversation with "), peer, el("span", "narrow", " (private)"));
      topic.textContent = "Only the two of you; nothing here is kept in the history.";
      leave.hidden = false;
      leave.replaceChildren("Leave", el("span", "wide", " conversation"));
      input.placeholder = `Message ${peer} (private)`;
    } else {
      name.textContent = `@${peer}`;
      topic.textContent = online ? "Direct message" : `${peer} is offline`;
      input.placeholder = online ? `Message @${peer}` : `${peer} is offline`;
      if (!online) input.disabled = true;
      if (state.pendingTo && key(state.pendingTo) === key(peer)) {
        leave.hidden = false;
        leave.textContent = "Cancel invitation";
      } else if (online && !state.partner) {
        invite.hidden = false;
      }
    }
  }

  // -- invitations ---------------------------------------------------------------

  // Each button is [its text, its class, its action, its accessible name]:
  // the name says whose invitation it is about (two invitations showed
  // "Accept", "Reject", "Accept", "Reject": which one was bob's?).
  function inviteCard(id, text, buttons) {
    const card = el("div", "invite");
    card.dataset.invite = id;
    card.append(el("span", "invite-text", text));
    for (const [label, cls, action, name] of buttons) {
      const b = el("button", cls, label);
      b.type = "button";
      b.setAttribute("aria-label", name);
      b.addEventListener("click", action);
      card.append(b);
    }
    $("invitations").append(card);
    return card;
  }

  // A card goes; the keyboard focus in it (its button was pressed, or it
  // ended meanwhile) goes on to the next invitation's first button, or the
  // message box, or the log, rather than falling back to the page's start.
  function removeCard(card) {
    const had = card.contains(document.activeElement);
    card.remove();
    if (!had) return;
    const next = $("invitations").querySelector("button:not(:disabled)");
    const input = $("composer-input");
    if (next) next.focus();
    else if (!input.disabled) input.focus();
    else $("messages").focus();
  }

  function dropInvite(nick) {
    const card = state.invites.get(key(nick));
    if (card) removeCard(card);
    state.invites.delete(key(nick));
  }

  function clearPendingCard() {
    const card = document.querySelector('[data-invite="pending"]');
    if (card) removeCard(card);
  }

  // A new connection (READY): the invitations of the old one, sent or
  // received, ended with it. The server forgot them and cannot say so (its
  // DECLINED or CANCELLED): the page says it instead, and their cards go.
  function endOldInvitations() {
    const ended = [...state.invites.values()].map((card) =>
      `The invitation from ${card.dataset.inviter} ended with the connection to the server.`);
    if (state.pendingTo) {
      ended.unshift(`Your invitation to ${state.pendingTo} ended with the connection to the server; invite again if you like.`);
    }
    state.pendingTo = null;
    clearPendingCard();
    for (const inviter of [...state.invites.keys()]) dropInvite(inviter);
    for (const text of ended) notice(current(), text);
  }

  // -- the connection ----------------------------------------------------------------

  // A line for the server: sent now, or held (in order) until the flood
  // tokens it needs are back (flush). False if not connected; null if
  // OUTBOX_MAX lines are held already: not sent, and said (unless `own`:
  // the page's own PING, PONG and USERS, which the lines held going out
  // make needless). `message`: the entry sentMessage() made for it, if it
  // is the user's message (watched once it is written to the socket).
  function send(line, message = null, own = false) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    if (outbox.queue.length >= OUTBOX_MAX) {
      if (!own) {
        const n = OUTBOX_MAX.toLocaleString("en");
        notice(current(), `Not sent: ${n} lines are already waiting for the server's flood limit (${flood.rate} a second). Try again once some have gone.`, { error: true });
      }
      return null;
    }
    outbox.queue.push({ line, message });
    flush();
    return true;
  }

  // -- flood control: the page's own pacing ------------------------------------------
  //
  // Every line the page sends spends one of the server's flood tokens
  // (--flood-rate a second, in bursts of --flood-burst), and USERS, PAIR and
  // ACCEPT one token per 4096 bytes of the user list (docs/protocol.md,
  // "Limits this server sets", 13). A line that finds too few is dropped
  // with ERROR flood. The server writes its rule into the page
  // (<html data-flood-rate data-flood-burst>); the page counts the tokens
  // it spends and holds a line that would find too few, in order, until
  // they are back: its own lines (the roster poll above all) never cost the
  // user a line of theirs (docs/web.md, "Flood control and the user list").

  const REPLY_BYTES = 4096; // the server's price of the user list: a token per this many bytes
  // Seconds the network may bunch the page's lines by (a delayed packet
  // lets the next ones catch up with it): the server may then see a burst
  // rate x this bigger than the page sent, so the page keeps that many
  // tokens in hand.
  const FLOOD_JITTER = 0.5;
  const flood = (() => {
    const data = document.documentElement.dataset;
    let rate = Number(data.floodRate);
    let burst = Number(data.floodBurst);
    // index.html always carries a rule (the server's, or its defaults): these
    // are only a guard against a page edited by hand.
    if (!(data.floodRate && Number.isFinite(rate) && rate >= 0 && Number.isInteger(burst) && burst >= 1)) {
      rate = 10;
      burst = 20;
    }
    return { rate, burst, room: Math.max(1, burst - rate * FLOOD_JITTER) };
  })();

  // The server's longest line in bytes of UTF-8 (--max-line), written
  // into the page (<html data-max-line>): a longer one is not sent
  // (submitMessage), as its ERROR too-long would say, and one far longer
  // would close the WebSocket (1009).
  const MAX_LINE = (() => {
    const n = Number(document.documentElement.dataset.maxLine);
    return Number.isInteger(n) && n > 0 ? n : 4096;
  })();
  function utf8Length(line) {
    return new TextEncoder().encode(line).length;
  }
  function tooLong(line) {
    return utf8Length(line) > MAX_LINE;
  }
  // "too long" in the user's terms: their message's bytes, and the room a
  // line of `most` bytes leaves it after its "MSG " or "DM nick " (what the
  // user typed is not the whole line, of `bytes`).
  function tooLongSaid(bytes, text, most) {
    const own = utf8Length(text);
    return `Your message was too long for the server (${own} bytes; at most ${most - (bytes - own)} here) and was not sent.`;
  }

  // Lines held at most (the terminal client's QUEUE_MAX): 100 s of lines at
  // the default rate. One more is refused, and said (send).
  const OUTBOX_MAX = 1000;

  const outbox = {
    queue: [], // {line, message}: lines held until the tokens they need are back
    tokens: flood.room, // the page's count, at `at` (at most flood.room)
    at: 0,
    lastSent: -Infinity,
    timer: null,
  };

  function resetOutbox() {
    clearTimeout(outbox.timer);
    outbox.timer = null;
    const held = outbox.queue.length;
    outbox.queue = [];
    outbox.tokens = flood.room; // a new connection starts with a full bucket
    outbox.at = performance.now();
    outbox.lastSent = -Infinity;
    return held;
  }

  function tokensAt(now) {
    if (!flood.rate) return Infinity;
    return Math.min(flood.room, outbox.tokens + ((now - outbox.at) / 1000) * flood.rate);
  }

  // The tokens a line costs: one, or for USERS, PAIR and ACCEPT the user
  // list's price (its size estimated from the list the page holds, rounded up).
  function costOf(line) {
    const verb = parse(line, 1)[0].toUpperCase();
    if (verb !== "USERS" && verb !== "PAIR" && verb !== "ACCEPT") return 1;
    return priceOf(rosterBytes());
  }

  // The tokens a user list of `bytes` costs, as the server charges it.
  function priceOf(bytes) {
    return Math.min(flood.burst, Math.max(1, Math.ceil(bytes / REPLY_BYTES)));
  }

  // Milliseconds before a line of `cost` tokens may go (0: now).
  function waitFor(cost, now) {
    if (!flood.rate) return 0;
    if (cost <= flood.room) {
      const have = tokensAt(now);
      return have >= cost ? 0 : Math.ceil(((cost - have) / flood.rate) * 1000);
    }
    // More than the page keeps in hand (a list near burst x 4 KiB): only
    // once the server's bucket is surely full, the page having sent nothing
    // for as long as it takes to fill.
    return Math.max(0, Math.ceil(outbox.lastSent + (flood.burst / flood.rate + FLOOD_JITTER) * 1000 - now));
  }

  function flush() {
    clearTimeout(outbox.timer);
    outbox.timer = null;
    while (outbox.queue.length) {
      const ws = state.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return; // closed() empties the queue
      const now = performance.now();
      const cost = costOf(outbox.queue[0].line);
      const ms = waitFor(cost, now);
      if (ms > 0) {
        outbox.timer = setTimeout(flush, ms);
        return;
      }
      outbox.tokens = Math.max(0, tokensAt(now) - cost);
      outbox.at = now;
      outbox.lastSent = now;
      const { line, message } = outbox.queue.shift();
      ws.send(line);
      watchSent(line, message);
    }
    pollRoster(); // a poll waits for an empty queue
  }

  // -- the user list: kept current, asked for when cheap ------------------------------
  //
  // JOINED and LEFT keep the list, and some lines tell a pair: the page's
  // own PAIRED, its UNPAIRED (the list follows it), DECLINED and CANCELLED
  // busy (the other side got paired). No line tells who else pairs or
  // unpairs, so the page asks USERS now and then: ROSTER_BASE after the last
  // list, times its price in tokens for a list over 4 KiB (at most x4), and
  // only when that is cheap: the page shown, no line held, every token back
  // (nothing sent for a second or two). A poll overdue by ROSTER_BASE more
  // goes anyway (the outbox holds what follows it, if need be). A page shown
  // again asks at once when its list is due; opening the drawer, when its
  // list is older than ROSTER_LOOK.

  const ROSTER_BASE = seconds("roster", 30); // ?roster=SECONDS (at least 1) sets it, for tests
  const ROSTER_MAX_FACTOR = 4;
  const ROSTER_LOOK = ROSTER_BASE / 3;

  const roster = {
    at: 0, // when the last list ended (performance.now())
    price: 1, // its price in tokens
    extra: 0, // bytes per USER line beyond "USER <nick> <state>\r\n" (addresses)
    askedAt: -Infinity, // when the page sent USERS; its list is not in yet
  };

  // The user list's size as the server would send it now, from the list the
  // page holds, rounded up (someone's JOINED may still be on its way).
  function rosterBytes() {
    let size = 8 + String(state.users.size).length; // USERS <count>\r\n
    for (const user of state.users.values()) {
      size += userLineBytes(user) + roster.extra;
    }
    return Math.ceil(size * 1.02) + 256;
  }

  // USER <nick> lobby\r\n, or paired: the line's size but for its extra.
  function userLineBytes(user) {
    return 13 + user.nick.length + (user.state === "paired" ? 1 : 0);
  }

  // A user list as its USER lines come: the people kept, how many were left
  // out (past USERS_MAX, or not a nick: counted online all the same), and the bytes of
  // every line, kept or not (the server charges them all). One object, so
  // that a new list starts all three afresh.
  function freshList() {
    return { users: [], leftOut: 0, bytes: 0 };
  }

  // A user list ended (USERS <count>): what it cost, and when it came.
  function rosterReceived(list, line) {
    let kept = 0;
    let bare = 0;
    for (const user of list.users) {
      kept += user.bytes;
      bare += userLineBytes(user);
    }
    roster.extra = list.users.length ? Math.max(0, (kept - bare) / list.users.length) : 0;
    roster.price = priceOf(line.length + 2 + list.bytes);
    roster.at = performance.now();
    roster.askedAt = -Infinity;
  }

  // Ask USERS if it is due and cheap (see above); `look`: the user opened
  // the drawer, so it goes now if the list is older than ROSTER_LOOK.
  function pollRoster(look = false) {
    if (!state.online || !state.ws || state.leaving) return;
    if (document.visibilityState === "hidden") return;
    const now = performance.now();
    if (now - roster.askedAt < ROSTER_BASE) return;
    const due = roster.at + (look ? ROSTER_LOOK : ROSTER_BASE * Math.min(ROSTER_MAX_FACTOR, roster.price));
    if (now < due) return;
    const cheap = !outbox.queue.length && tokensAt(now) >= flood.room && waitFor(costOf("USERS"), now) === 0;
    if (!cheap && !look && now < due + ROSTER_BASE) return;
    roster.askedAt = now;
    send("USERS", null, true);
  }

  function markPaired(nick) {
    const user = state.users.get(key(nick));
    if (user && user.state !== "paired") {
      user.state = "paired";
      putUser(user);
    }
  }


  // -- whether the server answers (docs/web.md, "When the server does not answer") ----
  //
  // The terminal client's rules, with its numbers (twisted_chat/client/
  // liveness.py and --timeout; tests/web/test_site.py compares them): once a
  // line the user sent has had no answer, nor anything else from the server,
  // for ANSWER_WAIT, the page sends PING; if still nothing comes within
  // PING_WAIT more, the banner says that those lines may not have arrived.
  // The connection is kept: a server only stopped for a while delivers them
  // when it goes on, and the page says that it answers again. Not watched:
  // PING, PONG, BYE and USERS (the page's own roster poll).
  //
  // The page's messages (MSG, DM) written to the socket and not yet
  // answered are one list, answers.unconfirmed, oldest first (the server
  // reads a connection's lines in order, and answers each message with its
  // copy to the sender or an ERROR):
  // - the server's copy, MSG <ts> <me> <to> <text>, confirms the oldest
  //   message with that text to that place (a MSG: wherever the server
  //   sent it, the lobby or a partner), and those sent before it: the
  //   server read them (each copied, refused, or dropped);
  // - a PONG confirms those sent before its PING;
  // - a refusal (ERROR no-such-nick, busy, too-long, bad-chars: see
  //   refused(); a "not sent" for a pair that changed: pairChanged())
  //   takes out the oldest message it can be about, to say so in that
  //   message's conversation, in the words of that moment (the ex-partner
  //   "has left the chat"; a line too long goes back to its message box;
  //   "not sent", the server's), and those sent before it, as a copy does;
  // - those still there when the connection is lost may not have arrived:
  //   once connected again, and its history replayed (a lobby line there
  //   arrived after all), the page says which.
  //
  // A new connection has HANDSHAKE_TIMEOUT to open, as long again for the
  // server's prompt (NICK or PASS: a HELLO alone is not one, the prompt
  // must follow it), and the page's own NICK and PASS as long for an
  // answer (READY, PASS, RETRY, ERROR): a server that takes the connection
  // and says nothing, or HELLO and nothing more, is given up, and the
  // backoff goes on. No timer runs while the page waits on the user (the
  // nick or password prompt, after a RETRY or an ERROR) or on its own
  // timer (RETRY taken or unavailable: the same NICK 3 s later; ERROR
  // flood: after the wait the server names, nickFlooded).
  //
  // ?answer=SECONDS and ?timeout=SECONDS on the page's URL (at least 1) set
  // ANSWER_WAIT and PING_WAIT (each), and HANDSHAKE_TIMEOUT: for tests,
  // which cannot wait that long.

  function seconds(name, fallback) {
    const s = Number(new URLSearchParams(location.search).get(name));
    return (Number.isFinite(s) && s >= 1 ? s : fallback) * 1000;
  }
  const ANSWER_WAIT = seconds("answer", 5);
  const PING_WAIT = seconds("answer", 5);
  const HANDSHAKE_TIMEOUT = seconds("timeout", 15);
  // The page's BYE (/quit) waits this long for the server's BYE quit, as
  // the terminal client's does (ChatClient.QUIT_TIMEOUT): then the page
  // gives up the connection, says so, and does not reconnect (the user left).
  const QUIT_WAIT = 5000;
  const UNCONFIRMED_MAX = 1000;

  const answers = {
    since: 0, // when the first line sent since the server last spoke went (0: none)
    count: 0, // lines sent since the server last spoke
    pinged: false,
    warned: false,
    timer: null,
    seq: 0,
    unconfirmed: [], // sentMessage() entries, written to the socket, not answered yet (above)
    pings: [], // the seq of the last message sent before each PING, its PONG not back yet
    lost: null, // unconfirmed when the connection was lost: said after the next READY block
    arrived: 0, // of those, the lobby lines the new connection's history shows
    reconnecting: false, // the connection was lost while online: "Reconnected." is due
    handshake: null, // the timer of a connection that must hear from the server
  };

  // The entry for a line the composer is about to send, if it is a message
  // the server answers with its copy (null otherwise): where it goes and
  // its text, and for a refusal, what the user typed (`typed`), its size,
  // and whether it goes to the partner of this moment.
  function sentMessage(line, typed) {
    const [verb, rest] = parse(line, 1);
    const upper = verb.toUpperCase();
    if (upper !== "MSG" && upper !== "DM") return null;
    const [, nick, text] = upper === "DM" ? parse(line, 2) : [null, null, rest];
    // Refused whatever happens (a bad nick; no text, as chat/1 counts
    // blanks: spaces and tabs): never copied.
    if ((nick !== null && !NICK_RE.test(nick)) || !/[^ \t]/.test(text)) return null;
    return {
      seq: 0, // set once written
      to: nick && key(nick), // null: a MSG, which the server routes
      peer: nick,
      conv: nick ? dmId(nick) : "lobby",
      partner: !!(nick && state.partner && key(state.partner) === key(nick)),
      text,
      typed,
      bytes: utf8Length(line),
    };
  }

  // A line was written to the socket (`message`: the sentMessage() entry
  // the composer made for it, or null).
  function watchSent(line, message) {
    const [verb] = parse(line, 1);
    const upper = verb.toUpperCase();
    if (upper === "PING") {
      answers.pings.push(answers.seq);
      return;
    }
    if (!state.online) {
      if (upper === "NICK" || upper === "PASS") {
        state.lastLogin = upper;
        awaitServer(); // its answer
      }
      return;
    }
    if (message) {
      answers.seq += 1;
      message.seq = answers.seq;
      answers.unconfirmed.push(message);
      if (answers.unconfirmed.length > UNCONFIRMED_MAX) answers.unconfirmed.shift();
    }
    if (upper === "BYE") awaitGoodbye();
    if (upper === "PONG" || upper === "BYE" || upper === "USERS") return;
    answers.count += 1;
    if (answers.since) return;
    answers.since = Date.now();
    answerLater(ANSWER_WAIT);
  }

  function answerLater(ms) {
    clearTimeout(answers.timer);
    answers.timer = setTimeout(noAnswer, ms);
  }

  function noAnswer() {
    answers.timer = null;
    if (!state.online || !answers.since) return;
    if (!answers.pinged) {
      answers.pinged = true;
      send("PING", null, true);
      answerLater(PING_WAIT);
      return;
    }
    if (answers.warned) return;
    answers.warned = true;
    const lines = answers.count === 1 ? "the last line you sent" : `the last ${answers.count} lines you sent`;
    const text = `No answer from the server for ${elapsed(answers.since)} seconds: ${lines} may not have arrived. The page keeps waiting.`;
    banner(text, null);
    notice(current(), text, { error: true });
  }

  const elapsed = (since) => Math.round((Date.now() - since) / 1000);

  // Watch no more (until the next line sent).
  function stopAnswerWatch() {
    clearTimeout(answers.timer);
    answers.timer = null;
    answers.since = 0;
    answers.count = 0;
    answers.pinged = answers.warned = false;
  }

  // Our BYE: the server's BYE quit must come within QUIT_WAIT (above).
  function awaitGoodbye() {
    const ws = state.ws;
    setTimeout(() => {
      if (ws !== state.ws || state.leaving) return;
      state.leaving = true;
      state.password = null; // as BYE quit forgets it
      dropSocket({ reason: "bye-unanswered" });
    }, QUIT_WAIT);
  }

  // The server must say something within HANDSHAKE_TIMEOUT, or this
  // connection is given up.
  function awaitServer() {
    clearTimeout(answers.handshake);
    const ws = state.ws;
    answers.handshake = setTimeout(() => {
      answers.handshake = null;
      if (ws !== state.ws || state.online) return;
      dropSocket({ reason: "no-answer" });
    }, HANDSHAKE_TIMEOUT);
  }

  // The server's lines that end the page's wait on it during the
  // handshake (above): its prompt, or its answer to the page's NICK or PASS.
  const HANDSHAKE_ANSWERS = new Set(["NICK", "PASS", "RETRY", "ERROR", "READY"]);

  // A line from the server (before the page handles it): the server is
  // alive, and its timers stop (the handshake's at a line that answers it).
  // What the line settles of the messages sent is handle()'s: a copy (MSG),
  // a PONG, a refusal (ERROR).
  function heard(line) {
    // Once READY came no handshake timer runs: no verb to read (each line).
    if (answers.handshake !== null && HANDSHAKE_ANSWERS.has(parse(line, 1)[0].toUpperCase())) {
      clearTimeout(answers.handshake);
      answers.handshake = null;
    }
    if (!answers.since) return;
    const { since, warned } = answers;
    stopAnswerWatch();
    if (!warned) return;
    if (state.online) banner(null);
    notice(current(), `The server answers again, after ${elapsed(since)} seconds.`);
  }

  // The oldest message still unconfirmed that `test` picks (or null), taken
  // out with those sent before it: the server read them too, in order
  // (taken, or refused with an ERROR).
  function takeUnconfirmed(test) {
    const list = answers.unconfirmed;
    const at = list.findIndex(test);
    return at < 0 ? null : list.splice(0, at + 1)[at];
  }

  // The server's copy of one of our messages (to: "*" for the lobby, or
  // the nick).
  const confirmed = (to, text) =>
    takeUnconfirmed((m) => m.text === text && (m.to === null || m.to === key(to)));

  // A lobby line of ours that a new connection's history shows as new (not
  // one the page showed before): one of the lost messages arrived after all.
  function arrivedAfterAll(text) {
    const lost = answers.lost;
    const at = lost.findIndex((m) => m.conv === "lobby" && m.text === text);
    if (at >= 0) {
      lost.splice(at, 1);
      answers.arrived += 1;
    }
  }

  // The end of a new connection's READY block: the messages the old one
  // left unconfirmed (and not shown by the history since), named in the
  // conversations they were sent in.
  function sayLost() {
    const lost = answers.lost;
    const arrived = answers.arrived;
    answers.lost = null;
    answers.arrived = 0;
    if (arrived) {
      notice(lobby(), `${arrived === 1 ? "One message" : arrived + " messages"} not confirmed before the connection was lost arrived after all: shown above, from the lobby's history.`);
    }
    const byConv = new Map();
    for (const m of lost) {
      if (!byConv.has(m.conv)) byConv.set(m.conv, []);
      byConv.get(m.conv).push(m);
    }
    for (const [id, list] of byConv) {
      const conv = id === "lobby" ? lobby() : dm(list[0].peer);
      const shown = list.slice(-10).map((m) => `“${shownOverrides(m.text.length > 80 ? m.text.slice(0, 79) + "…" : m.text)}”`);
      if (list.length > 10) shown.unshift(`(${list.length - 10} more, then)`);
      const what = list.length === 1 ? "This message was" : `These ${list.length} messages were`;
      const may = list.length === 1 ? "it may" : "they may";
      notice(conv, `${what} not confirmed by the server before the connection was lost, so ${may} not have arrived: ${shown.join(", ")}.`, { error: true });
    }
  }


  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + "/chat";
  }

  function connect() {
    state.idle = false;
    state.repass = null; // a new connection: the server's prompts start again
    stopCountDown();
    resetOutbox();
    dropSocket({ replaced: true }); // "Reconnect now" during an attempt: that one is given up
    answers.pings = [];
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.byeReason = null;
    state.byeText = "";
    state.lastLogin = null;
    awaitServer(); // the connection opens
    ws.onopen = () => {
      if (ws === state.ws) awaitServer(); // the server greets
    };
    ws.onmessage = (event) => {
      if (ws !== state.ws) return;
      state.lastLine = Date.now();
      state.heardAt = performance.now();
      for (const line of String(event.data).split(/\r?\n/)) {
        if (!line) continue;
        heard(line);
        handle(line);
      }
    };
    ws.onclose = (event) => {
      if (ws !== state.ws) return;
      // 1009: a message over the server's WebSocket limit (far over its
      // line limit, which the page checks before sending: a page edited,
      // or a server whose limit changed since the page was loaded).
      if (event.code === 1009) notice(lobby(), "The server closed the connection: a line sent was far too long for it (over its limit in bytes).", { error: true });
      closed();
    };
  }

  // -- leaving the page ---------------------------------------------------------------
  //
  // A page left by navigation (a link, a typed URL, Back) may be kept,
  // frozen, in the browser's back/forward cache with its socket open: its
  // user stayed online answering nothing until the server's ping timeout,
  // the nick refused to everyone, DMs to them confirmed and never shown.
  // Leaving the page leaves the chat as /quit does (BYE, then the socket is
  // closed); a page brought back from that cache (pageshow, persisted)
  // connects again, as after a lost connection (docs/web.md, "Leaving the
  // page"); not during a wait that ends in a connection or none (after too
  // many failed logins, loginWait; to send a NICK again, floodWait) nor at
  // a prompt the server closed (idle), which connects when used (wakeUp).
  window.addEventListener("pagehide", () => {
    const ws = state.ws;
    if (!ws) return;
    if (ws.readyState === WebSocket.OPEN) ws.send("BYE");
    dropSocket({ away: true });
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && !state.ws && !state.leaving && !state.idle && !state.floodWait) connect();
  });

  // The page gives up the connection of the moment (if any): its socket is
  // closed, and whatever it still does is ignored (its handlers look for
  // state.ws). Unless a new one replaces it at once (connect()), the page
  // then goes on as for any connection closed (closed()), the banner
  // saying `reason` (scheduleReconnect) if one is given; `away`: the page
  // is being left (pagehide).
  function dropSocket({ replaced = false, reason = null, away = false } = {}) {
    const ws = state.ws;
    if (!ws) return;
    state.ws = null;
    ws.close();
    if (replaced) return;
    if (reason) state.byeReason = reason;
    closed(away);
  }

  // The connection is over. `away`: the page closed it as it was left
  // (pagehide), and connects again if it is brought back (pageshow):
  // nothing went wrong, so no "Disconnected" is said, nor "Reconnected",
  // and no reconnection is scheduled (the page is frozen, or gone).
  function closed(away = false) {
    const wasOnline = state.online;
    state.online = false;
    state.ws = null;
    clearInterval(state.keepalive);
    clearInterval(state.rosterTimer);
    clearTimeout(answers.handshake);
    answers.handshake = null;
    stopAnswerWatch();
    const unconfirmed = answers.unconfirmed;
    answers.unconfirmed = [];
    const held = resetOutbox();
    state.accountRequest = null;
    state.listFor = null;
    closePasswordDialog();
    if (away && state.partner) {
      // The page's own BYE ended the pair, not a lost connection (READY).
      notice(dm(state.partner), "The private conversation ended: you left the page.");
      state.partner = null;
      renderConvList();
    }
    $("nick-submit").disabled = true;
    renderHeader();
    usersLive(false);
    if (state.leaving) {
      if (state.byeReason === "bye-unanswered") {
        banner(`You left the chat: the server did not answer the goodbye within ${QUIT_WAIT / 1000} s.`, "Join again");
        if (unconfirmed.length) {
          answers.lost = unconfirmed; // without its answer, those may not have arrived
          sayLost();
        }
      } else {
        banner("You left the chat.", "Join again");
      }
      // The composer is disabled now: the focus goes where the page goes on.
      $("banner-retry").focus();
      return;
    }
    if (wasOnline) {
      // Joins and leaves held while paired are shown now (the page may not
      // connect again); the lobby lines said among them, replayed by the
      // next connection, are put back among them (lobbyMessage).
      state.shownAtLoss = [];
      showHeldNotices(null, state.shownAtLoss);
      if (!away) {
        const row = notice(lobby(), "Disconnected from the server.", { error: true });
        // A lobby line said before it (on the server's clock), replayed by
        // the next connection, goes before it too.
        const at = lossTime();
        if (at !== null) state.shownAtLoss.push({ ts: at, row });
      }
      if (held) notice(lobby(), `${held === 1 ? "One line was" : held + " lines were"} not sent: the connection closed first.`, { error: true });
      if (unconfirmed.length) {
        const n = unconfirmed.length;
        notice(lobby(), `${n === 1 ? "One message you sent was" : n + " messages you sent were"} not confirmed by the server; once connected again, the page says which.`, { error: true });
        answers.lost = (answers.lost || []).concat(unconfirmed).slice(-UNCONFIRMED_MAX);
      }
      answers.reconnecting = !away;
      state.autoJoin = true;
    } else if (state.floodWait && state.byeReason !== "flood") {
      // The server's nick timeout during the wait to send a NICK it did
      // not look at: the wait goes on, and its end connects (nickFlooded).
      return;
    } else if (state.byeReason === "timeout" && !state.autoJoin) {
      // A prompt left alone past the server's --nick-timeout: nothing to
      // show, no backoff; Join stays usable and connects (wakeUp).
      state.idle = true;
      banner(null);
      $("nick-submit").disabled = false;
      return;
    } else if (state.byeReason === "flood") {
      loginRefused();
      return;
    }
    if (away) {
      banner(null);
      return;
    }
    scheduleReconnect();
  }

  // BYE flood before READY: the server refused this login, and would refuse
  // the same again at once, so the page does not reconnect by itself (nor
  // does the terminal client: client/reconnect.py). After a PASS it means
  // too many failed logins (docs/protocol.md, "Accounts": from one address
  // a nick gets 5 tries, then one a minute; the address 10, then one per
  // 30 s): the page says so, and that nick is not tried again for
  // LOGIN_COOLDOWN; another nickname may be joined at once. Before one
  // (too much sent before the login was decided) the prompt is simply back.
  // ?cooldown=SECONDS (at least 1) sets LOGIN_COOLDOWN, for tests.
  const LOGIN_COOLDOWN = seconds("cooldown", 60);
  function loginRefused() {
    stopCountDown(); // a wait to send a NICK again (nickFlooded) is over
    const nick = state.wanted;
    const failed = state.lastLogin === "PASS";
    const said = state.byeText ? ` The server said: “${state.byeText}”.` : "";
    state.autoJoin = false;
    state.queued = null;
    state.repass = null;
    if (!failed) {
      showLogin(false, `The server closed the connection before the login was decided.${said}`);
      state.idle = true; // the prompt connects again when used (wakeUp), no timer
      return;
    }
    state.password = null; // never checked: typed again when asked for
    state.loginWait = { nick, until: Date.now() + LOGIN_COOLDOWN }; // before the prompt's focus (wakeUp)
    state.idle = true;
    // The error line is an alert: a screen reader hears why, once.
    showLogin(false, `Too many failed logins for ${nick}: the server refuses more tries for now. Try again in a minute, or choose another nickname.${said}`);
    countDown(state.loginWait.until, (s) => {
      banner(`Too many failed logins for ${nick}: try again in ${s} s.`, null, false, "");
    }, () => {
      state.loginWait = null;
      banner(`You may try to log in as ${nick} again.`, "Try again");
    });
  }

  // 0 if `nick` may be joined now (another nick than the one refused for
  // failed logins ends the wait), else the seconds left of the wait.
  function loginWaitLeft(nick) {
    const wait = state.loginWait;
    if (!wait) return 0;
    if (key(nick) !== key(wait.nick)) {
      state.loginWait = null;
      stopCountDown();
      banner(null);
      return 0;
    }
    return Math.max(1, Math.ceil((wait.until - Date.now()) / 1000));
  }

  function scheduleReconnect() {
    // 1, 2, 4, 8, 16, 30 seconds (with jitter), back to 1 s only once a
    // connection gets in (READY, joined()): a HELLO alone does not reset it.
    // The terminal client uses the same rule (client/reconnect.py).
    const base = Math.min(30, 2 ** state.attempt);
    const delay = base * 1000 * (0.75 + Math.random() * 0.5);
    state.attempt += 1;
    const why = {
      shutdown: "The server is restarting.",
      full: "The server is full.", // BYE full: too many connections (docs/protocol.md, "Limits this server sets")
      "no-answer": "No answer from the server.",
      // BYE flood once in the chat (before READY it is a refused login: loginRefused).
      flood: "Disconnected for sending too fast.",
    }[state.byeReason] || "Disconnected.";
    // Spoken once an outage (a screen reader would read out each second's
    // count, and each attempt's): the first attempt's words stay.
    const spoken = bannerSaid.endsWith("Reconnecting…") ? bannerSaid : `${why} Reconnecting…`;
    countDown(Date.now() + delay, (s) => {
      banner(`${why} Reconnecting in ${s} s…`, "Reconnect now", false, spoken);
    }, () => {
      // The button stays: it gives up this attempt for a new one.
      banner(`${why} Reconnecting…`, "Reconnect now", false, spoken);
      connect();
    });
  }

  // The banner counts down to `until` (a Date.now() time): draw(s), with
  // the seconds left, now and each second (state.countdown); done() at
  // `until` (state.retryTimer). The reconnection's backoff, and the wait
  // after too many failed logins.
  function countDown(until, draw, done) {
    const tick = () => draw(Math.max(0, Math.ceil((until - Date.now()) / 1000)));
    tick();
    clearInterval(state.countdown);
    state.countdown = setInterval(tick, 1000);
    state.retryTimer = setTimeout(() => {
      clearInterval(state.countdown);
      done();
    }, until - Date.now());
  }

  // The banner's countdown stops, and its done() is not called.
  function stopCountDown() {
    clearInterval(state.countdown);
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.floodWait = false;
  }

  // ERROR flood answering the page's NICK: the server did not look at the
  // nick (too many registered from this address lately: users behind one
  // address all coming back after a restart) and names the wait, "try
  // again in N s". The page says so, waits it out and sends the same NICK
  // again, at most FLOOD_TRIES times in a row; then the nick prompt shows
  // the server's words. The terminal client's rule and numbers
  // (client/login.py, Login.FLOOD_*; tests/web/test_site.py compares them).
  // Seconds: the wait when the server names none, and the longest.
  const FLOOD_DELAY = 3;
  const FLOOD_WAIT_MAX = 30;
  const FLOOD_TRIES = 10;

  // The seconds to wait before sending a NICK the server did not look at
  // again: the wait its text names, at least 1 s and at most FLOOD_WAIT_MAX.
  function floodWait(text) {
    const named = /\btry again in (\d+(?:\.\d+)?) s\b/.exec(text);
    return Math.min(Math.max(named ? Number(named[1]) : FLOOD_DELAY, 1), FLOOD_WAIT_MAX);
  }

  function nickFlooded(text) {
    const nick = state.wanted;
    const why = `The server did not look at the nickname ${nick}: ${(text || "too many nicks").replace(/\.$/, "")}.`;
    stopCountDown();
    state.floodRetries += 1;
    if (state.floodRetries > FLOOD_TRIES) {
      state.floodRetries = 0;
      state.autoJoin = false;
      state.queued = null;
      showLogin(false, `${why} Still refused after ${FLOOD_TRIES} tries: join again later, or choose another nickname.`);
      return;
    }
    const tries = `try ${state.floodRetries} of ${FLOOD_TRIES}`;
    const wait = floodWait(text);
    const spoken = `${why} Sending it again in ${wait} s (${tries}).`;
    const ws = state.ws;
    countDown(Date.now() + wait * 1000, (s) => {
      banner(`${why} Sending it again in ${s} s (${tries}).`, null, false, spoken);
    }, () => {
      state.floodWait = false;
      if (state.online) return;
      if (state.ws === ws && send("NICK " + nick)) return;
      if (state.ws && state.ws !== ws) return; // a connection under way asks for the nick itself
      // The connection ended meanwhile (the server's nick timeout): a new
      // one, whose prompt gets the same nick.
      if (!state.autoJoin && !state.queued) state.queued = "nick";
      connect();
    });
    state.floodWait = true;
  }

  // The banner shows `text`; a screen reader hears `spoken` (the text, by
  // default) from a live region of its own (#banner-say), only when that
  // changes: the disconnection, "Reconnecting…", "Connected.", not each
  // second of the countdown (the banner was the live region, rewritten
  // every second). The banner's text stays readable on demand (the
  // disabled buttons' description).
  let bannerSaid = "";
  function banner(text, button, ok, spoken = text) {
    const b = $("banner");
    if (!text) {
      b.hidden = true;
      bannerSaid = "";
      $("banner-say").textContent = ""; // the same words again are news again
      return;
    }
    if (spoken !== bannerSaid) {
      bannerSaid = spoken;
      $("banner-say").textContent = spoken;
    }
    b.hidden = false;
    b.classList.toggle("ok", !!ok);
    $("banner-text").textContent = text;
    const retry = $("banner-retry");
    retry.hidden = !button;
    if (button) retry.textContent = button;
  }

  // The user is back at a prompt the server closed for inactivity: connect.
  function wakeUp() {
    if (state.idle && !state.ws && !state.loginWait) connect();
  }

  $("banner-retry").addEventListener("click", () => {
    if (state.leaving) {
      state.leaving = false;
      state.autoJoin = true;
      state.attempt = 0;
    }
    // "Try again" after too many failed logins: the nick the server refused.
    if (state.idle && !state.loginWait && state.wanted) state.queued = "nick";
    banner(null);
    connect();
  });

  // The keepalive: a PING after this long without a line, the connection
  // dropped after this long, looked at every KEEPALIVE_TICK (ms).
  const KEEPALIVE_PING = 45000;
  const KEEPALIVE_DROP = 65000;
  const KEEPALIVE_TICK = 10000;

  // The time of a disconnection on the server's clock (ms; null: not
  // known): now, by the largest lead (serverAhead); never later than the
  // keepalive's close of a connection silent since the last line heard,
  // by the last live line's lead. So neither one wrong time (a hostile
  // server, a clock set right since) nor a monotonic clock that counts a
  // sleep (Windows) moves it further.
  function lossTime() {
    if (state.serverAhead === null) return null;
    const noticed = state.heardAt + KEEPALIVE_DROP + KEEPALIVE_TICK;
    return Math.min(performance.now() + state.serverAhead, noticed + state.lastAhead);
  }

  function joined() {
    // READY while a password was being typed (a new connection's NICK was
    // enough): what was typed is dropped, and the focus stays off the
    // composer, so that the next keys are not a lobby message.
    const interrupted = dropTypedPassword();
    state.online = true;
    state.attempt = 0; // in the chat: the next loss starts the backoff at 1 s again
    state.takenRetries = 0;
    state.unavailableRetries = 0;
    state.floodRetries = 0;
    state.autoJoin = false;
    state.queued = null;
    askPassword = false;
    store("twisted-chat.nick", state.me);
    $("login").hidden = true;
    $("app").hidden = false;
    $("me-nick").textContent = state.me;
    usersLive(true);
    if (answers.reconnecting) {
      // The lobby's last notice said "Disconnected from the server.": no more.
      answers.reconnecting = false;
      const text = `Reconnected at ${localTime(new Date())}.`;
      notice(lobby(), text);
      if (state.active !== "lobby") notice(current(), text);
    }
    if (!$("banner").hidden) {
      banner("Connected.", null, true);
      setTimeout(() => { if (state.online) banner(null); }, 2000);
    }
    clearInterval(state.keepalive);
    // A connection that went silent (a dead network) is noticed here: the
    // server answers PING at once, so no line for 20 s after one is a loss.
    state.keepalive = setInterval(() => {
      if (!state.ws) return;
      if (Date.now() - state.lastLine > KEEPALIVE_DROP) {
        dropSocket();
      } else if (Date.now() - state.lastLine > KEEPALIVE_PING) {
        send("PING keepalive", null, true);
      }
    }, KEEPALIVE_TICK);
    // Who else is paired changes without a notice to us: the list is asked
    // for again now and then, when that is cheap (pollRoster).
    clearInterval(state.rosterTimer);
    state.rosterTimer = setInterval(pollRoster, 1000);
    renderHeader();
    show(state.active, !interrupted);
  }

  // -- lines from the server --------------------------------------------------------

  function handle(line) {
    const verb = parse(line, 1)[0].toUpperCase();
    const ts = (s) => {
      const d = new Date(s);
      return isNaN(d) ? new Date() : d;
    };
    // A live line's time (MSG, JOINED, LEFT; not HISTORY) also tells the
    // server's clock at the page's performance.now() origin (state.serverAhead).
    const liveTs = (s) => {
      const d = new Date(s);
      if (isNaN(d)) return new Date();
      const ahead = d.getTime() - performance.now();
      if (state.serverAhead === null || ahead > state.serverAhead) state.serverAhead = ahead;
      state.lastAhead = ahead;
      return d;
    };
    switch (verb) {
      case "HELLO": {
        const [, , text] = parse(line, 2);
        const m = /^(.*?)\s*\(twisted-chat/.exec(text);
        state.serverName = (m && m[1]) || text;
        $("server-name").textContent = `on ${state.serverName}`;
        $("workspace-name").textContent = state.serverName;
        bumpTitle(0);
        // The backoff goes on: a server that greets and then closes (BYE
        // full) is not tried again every second; READY resets it (joined()).
        break;
      }
      case "NICK": // the server asks for a nickname
        // A rejoin; a nick Join sent while not connected; or a new connection
        // under the password prompt (the nick was given already).
        if ((state.autoJoin || state.queued || askPassword) && state.wanted) {
          send("NICK " + state.wanted);
          if (state.queued === "nick") state.queued = null;
        } else {
          showLogin();
        }
        break;
      case "PASS": {
        // Answered by itself only with a password held for this very nick.
        const [, nick] = parse(line, 1);
        state.floodRetries = 0; // the nick was looked at
        const held = state.password;
        const again = state.repass;
        state.repass = null;
        if (again && again.declined) break; // another nickname is being chosen: its NICK replaces this one
        if ((state.autoJoin || state.queued === "pass") && held && key(held.nick) === key(nick || state.wanted)) {
          state.queued = null;
          send("PASS " + held.value);
        } else {
          // The prompt is the user's now: left alone past --nick-timeout it
          // is not a disconnection (closed()), whatever brought it here.
          state.queued = null;
          state.autoJoin = false;
          showLogin(true, again ? again.error : undefined);
        }
        break;
      }
      case "RETRY": {
        const [, reason, text] = parse(line, 2);
        state.floodRetries = 0; // the nick was looked at
        if (reason === "taken" && state.autoJoin && state.takenRetries < 40) {
          // Our old connection may still be online until the server notices it is gone.
          state.takenRetries += 1;
          banner(`Waiting for ${state.wanted} to be free (${text})…`, null);
          const ws = state.ws;
          setTimeout(() => {
            if (ws === state.ws && !state.online) send("NICK " + state.wanted);
          }, 3000);
          break;
        }
        if (reason === "unavailable" && state.wanted && state.unavailableRetries < 10) {
          // Not about the nick or the password: the server cannot check them
          // for a moment (cluster mode, Redis out of reach). Send the same
          // NICK again 3 s later (the stored password answers PASS), at most
          // 10 times in a row; keep the nick and the password.
          state.unavailableRetries += 1;
          state.autoJoin = true;
          banner(`The server is briefly unavailable (${text || reason}); trying again…`, null);
          const ws = state.ws;
          setTimeout(() => {
            if (ws === state.ws && !state.online) send("NICK " + state.wanted);
          }, 3000);
          break;
        }
        state.unavailableRetries = 0;
        state.autoJoin = false;
        state.queued = null;
        if (reason !== "unavailable") state.password = null;
        if (reason === "bad-password" && state.wanted) {
          // The password was refused (typed, or held for a rejoin): asked
          // for again, hidden, as the terminal client does; the page sends
          // the NICK the server wants again itself. The field never turns
          // back into the nick's while a password may be retyped in it: that
          // showed the password in clear, and Join sent it as a NICK.
          const error = loginError(reason, text);
          state.repass = { error, declined: false };
          showLogin(true, error);
          send("NICK " + state.wanted);
          break;
        }
        showLogin(false, loginError(reason, text));
        break;
      }
      case "READY": {
        const [, nick] = parse(line, 1);
        state.me = nick;
        state.wanted = nick;
        if (state.password && key(state.password.nick) !== key(nick)) state.password = null;
        state.users = new Map();
        state.unlisted = 0;
        state.pendingList = freshList();
        state.serverAhead = null; // this connection's server tells its own
        state.lastAhead = null;
        // A new connection: whatever pair or invitation the old one had is
        // over, and the pair's conversation says so. The joins and leaves
        // it held were shown at its end (closed()); the history that
        // follows puts the lobby lines said among them back in their place
        // (lobbyMessage).
        state.unpairedFrom = null;
        if (state.partner) {
          notice(dm(state.partner), "The private conversation ended: the connection to the server was lost.");
        }
        state.partner = null;
        endOldInvitations();
        // The history that follows may repeat what the page showed on an
        // earlier connection (a reconnection): those lines are not shown again.
        state.replaySkip = new Map(state.shownLobby);
        renderConvList();
        joined();
        break;
      }
      case "HISTORY": {
        const [, t, from, text] = parse(line, 3);
        const shown = lobbyMessage(ts(t), from, text, t, state.replaySkip);
        if (shown && answers.lost && state.me && key(from) === key(state.me)) arrivedAfterAll(text);
        break;
      }
      case "USER": {
        const [, nick, st] = parse(line, 3);
        // Kept only from a nick, and at most USERS_MAX, as in the terminal
        // client (Roster): a hostile server's "nicks" may be a megabyte
        // each, its list countless. Those left out are counted: in the
        // count online, and said with the list asked for (/users), as the
        // terminal says them. Every line, kept or not, counts in the list's price.
        const list = state.pendingList || (state.pendingList = freshList());
        list.bytes += line.length + 2;
        if (list.users.length < USERS_MAX && NICK_RE.test(nick)) {
          list.users.push({ nick, state: st, bytes: line.length + 2 });
        } else {
          list.leftOut += 1;
        }
        break;
      }
      case "USERS": {
        if (state.replaySkip) state.shownAtLoss = []; // the end of a READY block
        state.replaySkip = null;
        const list = state.pendingList || freshList();
        const users = list.users;
        state.users = new Map(users.map((u) => [key(u.nick), u]));
        state.unlisted = list.leftOut;
        state.pendingList = null;
        rosterReceived(list, line);
        renderUsers();
        if (state.listFor) {
          // The user asked (/users): the list, in words, where it was asked,
          // as the terminal client prints its table (the sidebar is a
          // closed drawer at phone width).
          const conv = state.convs.get(state.listFor) || current();
          state.listFor = null;
          notice(conv, onlineText(users, list.leftOut));
        }
        if (state.unpairedFrom) {
          showHeldNotices();
          notice(lobby(), `Your private conversation with ${state.unpairedFrom} ended.`);
          state.unpairedFrom = null;
        }
        if (answers.lost && state.online) sayLost(); // after a reconnection
        break;
      }
      case "MSG": {
        const [, t, from, to, text] = parse(line, 4);
        const mine = !!state.me && key(from) === key(state.me);
        if (mine) confirmed(to, text);
        if (to === "*") {
          lobbyMessage(liveTs(t), from, text, t);
        } else {
          addMessage(dm(mine ? to : from), liveTs(t), from, text);
        }
        break;
      }
      case "JOINED": {
        const [, t, nick] = parse(line, 2);
        // A row only for a nick, while the list holds fewer than USERS_MAX
        // (the terminal's Roster.joined); the join is still said, and counted.
        if (NICK_RE.test(nick) && (state.users.has(key(nick)) || state.users.size < USERS_MAX)) {
          putUser({ nick, state: "lobby" });
        } else if (!state.users.has(key(nick))) {
          state.unlisted += 1;
          usersChanged();
        }
        lobbyNotice(shortened(`${nick} joined the chat`, HELD_TEXT), liveTs(t));
        break;
      }
      case "LEFT": {
        const [, t, nick, reason, text] = parse(line, 4);
        if (state.users.has(key(nick))) {
          dropUser(nick);
        } else if (state.unlisted) {
          // Someone with no row: one of those left out.
          state.unlisted -= 1;
          usersChanged();
        }
        const why = { quit: "left", disconnected: "disconnected", timeout: "timed out", flood: "was disconnected for flooding", sendq: "was disconnected (not reading)" }[reason] || `left (${reason})`;
        const msg = shortened(`${nick} ${why}` + (text ? `: ${shownOverrides(text)}` : ""), HELD_TEXT);
        const at = liveTs(t);
        lobbyNotice(msg, at);
        const conv = state.convs.get(dmId(nick));
        if (conv) notice(conv, msg, { ts: at });
        dropInvite(nick);
        break;
      }
      case "INVITE": {
        const [, from] = parse(line, 1);
        // Kept (a card to answer) only from a nick, and at most
        // INVITES_MAX of them, as in the terminal client: Accept could not
        // answer another, and a hostile server's "nicks" may be a megabyte
        // each, its invitations countless. The invitation is still said
        // (cut to HELD_TEXT characters); one past the bound, with no card,
        // is answered by /accept NICK, sent as typed.
        const known = state.invites.has(key(from));
        if (NICK_RE.test(from) && (known || state.invites.size < INVITES_MAX)) {
          dropInvite(from);
          const card = inviteCard(key(from), `${from} invites you to a private conversation.`, [
            ["Accept", "accept", () => send("ACCEPT " + from), `Accept ${from}'s invitation`],
            ["Reject", "reject", () => {
              send("REJECT " + from);
              dropInvite(from);
              notice(current(), `You declined ${from}'s invitation.`);
            }, `Reject ${from}'s invitation`],
          ]);
          card.dataset.inviter = from; // as spelled, for endOldInvitations
          state.invites.set(key(from), card);
        }
        notice(lobby(), shortened(`${from} invited you to a private conversation.`, HELD_TEXT));
        bumpTitle(document.hidden ? 1 : 0);
        break;
      }
      case "PENDING": {
        const [, to] = parse(line, 1);
        state.pendingTo = to;
        // Invite, pressed, is hidden now (its focus fell to the page's
        // start): the focus goes to the card's Cancel.
        const had = document.activeElement;
        const fromInvite = !had || had === document.body || had === $("invite-button");
        clearPendingCard();
        const card = inviteCard("pending", `Waiting for ${to} to accept your invitation…`, [
          ["Cancel", "cancel", () => send("UNPAIR"), `Cancel your invitation to ${to}`],
        ]);
        renderHeader();
        if (fromInvite) card.querySelector("button").focus();
        break;
      }
      case "PAIRED": {
        const [, partner] = parse(line, 1);
        state.partner = partner;
        state.pendingTo = null;
        clearPendingCard();
        for (const nick of [...state.invites.keys()]) dropInvite(nick);
        const conv = dm(partner);
        notice(conv, `You are now in a private conversation with ${partner}.`);
        markPaired(state.me);
        markPaired(partner);
        show(conv.id);
        break;
      }
      case "UNPAIRED": {
        const [, partner, reason] = parse(line, 2);
        const conv = dm(partner);
        // "disconnected": the partner went offline, and their LEFT, just
        // before, said how here ("bob disconnected", "bob timed out"...).
        const why = reason === "disconnected" ? "" : `The private conversation with ${partner} ended. `;
        notice(conv, `${why}You are back in the lobby.`);
        state.partner = null;
        state.pendingList = freshList();
        // Told in the lobby after the lines missed meanwhile (the replay
        // that follows, up to its user list).
        state.unpairedFrom = partner;
        renderConvList();
        if (state.active === conv.id) show("lobby");
        else renderHeader();
        break;
      }
      case "DECLINED": {
        const [, to, reason] = parse(line, 2);
        state.pendingTo = null;
        clearPendingCard();
        // Not us (our PAIRED came first): they got paired with someone else.
        if (reason === "busy" && !state.partner) markPaired(to);
        const text = {
          rejected: `${to} declined your invitation.`,
          withdrawn: `You withdrew your invitation to ${to}.`,
          timeout: `Your invitation to ${to} expired.`,
          busy: `${to} is busy in another conversation.`,
          gone: `${to} is no longer online.`,
        }[reason] || `Your invitation to ${to} ended (${reason}).`;
        notice(current(), text);
        renderHeader();
        break;
      }
      case "CANCELLED": {
        const [, from, reason] = parse(line, 2);
        if (reason === "busy" && !state.partner) markPaired(from); // as DECLINED busy
        if (state.invites.has(key(from))) {
          dropInvite(from);
          const text = {
            withdrawn: `${from} withdrew the invitation.`,
            timeout: `The invitation from ${from} expired.`,
            busy: `The invitation from ${from} ended (busy).`,
            gone: `${from} is no longer online.`,
            rejected: `You declined ${from}'s invitation.`,
          }[reason] || `The invitation from ${from} ended (${reason}).`;
          notice(current(), text);
        }
        break;
      }
      case "ERROR": {
        const [, code, text] = parse(line, 2);
        if (!state.online && code === "flood" && state.lastLogin === "NICK" && state.wanted) {
          nickFlooded(text); // the server did not look at the nick: sent again after a wait
        } else if (!state.online) {
          $("nick-error").textContent = code === "not-ready" ? notReady(text) : text;
          if (code === "server-full") banner(text, null);
        } else if (pairChanged(code, text)) {
          settlePairChanged(text);
        } else if (REFUSED.has(code)) {
          refused(code, text);
        } else if (ACCOUNT_ERRORS[code] || (code === "unavailable" && text.startsWith(ACCOUNTS_UNAVAILABLE))
                   || (code === "flood" && PASSWORD_FLOOD_RE.test(text))) {
          // The REGISTER or PASSWD awaited (if any) was not done: its
          // request is over (unavailable: the terminal client's words;
          // flood: the server's).
          const request = state.accountRequest;
          state.accountRequest = null;
          const verb = request && request.verb;
          const said = ACCOUNT_ERRORS[code] ? ACCOUNT_ERRORS[code](text, verb)
            : verb ? notDone(verb, text) : serverReason(text);
          notice(current(), said, { error: true });
        } else if (code === "unavailable") {
          // Any other unavailable ("not sent: the chat's store ...", "lost:
          // ...") took effect nowhere, but may answer any command: one taken
          // back after --redis-wait or refused by the store, or, after an
          // ERROR unconfirmed, one sent long before. The page cannot tell
          // which, so it settles no message (one it did answer stays in
          // doubt: docs/web.md): the server's words where the user is.
          notice(current(), serverReason(text), { error: true });
        } else {
          notice(current(), pageWords(text), { error: true });
        }
        break;
      }
      case "BYE": {
        const [, reason, text] = parse(line, 2);
        state.byeReason = reason;
        state.byeText = text;
        if (reason === "quit") {
          // The user left (/quit): nothing reconnects, and the password is
          // forgotten, so that "Join again" asks for it (the next person at
          // this computer is not logged in as this one).
          state.leaving = true;
          state.password = null;
        }
        if (state.online) {
          const why = { shutdown: "The server is shutting down.", timeout: "Disconnected: no activity.", flood: "Disconnected for sending too fast.", quit: "You left the chat." }[reason] || `Disconnected (${reason}).`;
          notice(lobby(), why + (text && reason !== "shutdown" ? ` ${text}` : ""), { error: reason !== "quit" });
        }
        break;
      }
      case "PING": {
        const [, text] = parse(line, 1);
        send(text ? "PONG " + text : "PONG", null, true);
        break;
      }
      case "PONG":
        // The answer to the page's oldest PING: the server read every
        // message sent before it.
        if (answers.pings.length) {
          const upTo = answers.pings.shift();
          answers.unconfirmed = answers.unconfirmed.filter((m) => m.seq > upTo);
        }
        break;
      case "HELP": {
        const [, text] = parse(line, 1);
        if (text) notice(current(), text);
        break;
      }
      case "REGISTERED": {
        const [, nick] = parse(line, 1);
        const request = state.accountRequest;
        state.accountRequest = null;
        // Remembered as a login's password is: a rejoin answers PASS with it.
        if (request) state.password = { nick: nick || state.me, value: request.password };
        notice(current(), request && request.verb === "PASSWD"
          ? `The password for ${nick} was changed.`
          : `${nick} is now registered: from now on this nickname can only be used with your password.`);
        break;
      }
      default:
        break; // anything newer than this page
    }
  }

  // The user list in one line: "3 online: alice (you), bob (paired), carol."
  function onlineText(users, leftOut = 0) {
    const names = [...users].sort((a, b) => byNick(key(a.nick), key(b.nick))).map((u) => {
      if (state.me && key(u.nick) === key(state.me)) return `${u.nick} (you)`;
      return u.state === "paired" ? `${u.nick} (paired)` : u.nick;
    });
    const more = leftOut ? `, and ${leftOut.toLocaleString("en")} more, not shown` : "";
    return `${(names.length + leftOut).toLocaleString("en")} online: ${names.join(", ")}${more}.`;
  }

  // A lobby message, live or replayed. Only the history of a new
  // connection's READY block (skip: what the page showed before it) can
  // repeat one already shown: each line there consumes one of those it
  // matches. Live lines, and the replay after UNPAIRED (only what was said
  // while paired), are always shown: the server never sends one twice.
  // True if it was shown.
  function lobbyMessage(ts, from, text, rawTs, skip) {
    const id = `${rawTs} ${from} ${text}`;
    if (skip && ts.getTime() <= state.shownFloor) return false; // older than what the page remembers
    const left = skip ? skip.get(id) || 0 : 0;
    if (left > 0) {
      skip.set(id, left - 1);
      return false;
    }
    state.shownLobby.set(id, (state.shownLobby.get(id) || 0) + 1);
    state.shownOrder.push([id, ts.getTime()]);
    if (state.shownOrder.length > MAX_ROWS) {
      const [old, time] = state.shownOrder.shift();
      const n = state.shownLobby.get(old) - 1;
      if (n > 0) state.shownLobby.set(old, n);
      else state.shownLobby.delete(old);
      state.shownFloor = Math.max(state.shownFloor, time);
    }
    showHeldNotices(ts);
    addMessage(lobby(), ts, from, text, skip ? laterNoticeShown(ts) : null);
    return true;
  }

  // The first join or leave shown at the last disconnection
  // (state.shownAtLoss) that is later than `ts`, if still on the page.
  function laterNoticeShown(ts) {
    const later = state.shownAtLoss.find((shown) => shown.ts > ts.getTime() && shown.row.isConnected);
    return later ? later.row : null;
  }

  // Characters kept of one held join or leave (the terminal client's
  // HELD_TEXT), and of one shown live or an invitation's notice: more than
  // a server's longest line, so that only a hostile server's are cut, and
  // MAX_ROWS of them stay a few megabytes.
  const HELD_TEXT = 4096;

  // A join or leave in the lobby: shown now, or, while paired (the lobby's
  // lines wait for the pair's end), held, cut to HELD_TEXT characters, and
  // shown among them then.
  function lobbyNotice(text, ts) {
    if (!state.partner) {
      notice(lobby(), text, { ts });
      return;
    }
    state.heldNotices.push({ ts, text: shortened(text, HELD_TEXT) });
    if (state.heldNotices.length > MAX_ROWS) {
      state.heldNotices.shift();
      state.heldDropped += 1;
    }
  }

  // `text` with at most `most` characters, ending with "…" if cut (never
  // between the halves of a surrogate pair).
  function shortened(text, most) {
    if (text.length <= most) return text;
    const cut = text.slice(0, most);
    return (/[\uD800-\uDBFF]$/.test(cut) ? cut.slice(0, -1) : cut) + "…";
  }

  // The held notices up to `until` (all of them without it), in time order;
  // once the last is shown, how many older ones were not kept (said after
  // them, not before: the lobby keeps its last MAX_ROWS rows). The terminal
  // client says the same (client/lobbyview.py, not_kept).
  // `shown`, if given, gets each one's {ts, row}.
  function showHeldNotices(until, shown = null) {
    const held = state.heldNotices;
    let n = 0;
    while (n < held.length && (!until || held[n].ts.getTime() <= until.getTime())) {
      const row = notice(lobby(), held[n].text, { ts: held[n].ts });
      if (shown) shown.push({ ts: held[n].ts.getTime(), row });
      n += 1;
    }
    if (n) held.splice(0, n);
    const dropped = state.heldDropped;
    if (held.length || !dropped) return;
    state.heldDropped = 0;
    const what = dropped === 1 ? "join or leave in the lobby before these was" : "joins and leaves in the lobby before these were";
    notice(lobby(), `${dropped.toLocaleString("en")} ${what} not kept: at most ${MAX_ROWS.toLocaleString("en")} are held during a private conversation.`);
  }

  // -- the nick prompt ------------------------------------------------------------------

  // The server's RETRY text, in the page's words where it speaks the
  // protocol ("usage: NICK <nick>" for a nick with a space in it; "send
  // NICK again" after a wrong password).
  function loginError(reason, text) {
    if (reason === "invalid" && (!text || text.startsWith("usage:"))) {
      return "A nickname is one word: letters, digits, _ and -, starting with a letter (at most 24).";
    }
    if (reason === "bad-password" && /^wrong password/.test(text || "")) {
      return `Wrong password, or no account for ${state.wanted}: type the password again.`;
    }
    return text || reason;
  }

  // ERROR not-ready before READY, in the page's words by what the server's
  // text says it waits for (its text names protocol verbs: "send PASS
  // <password>, or NICK <nick> to choose another nick"): the terminal
  // client's words (client/render.py, not_ready).
  function notReady(text) {
    const waiting = /^the server is waiting for the password of (\S+?):/.exec(text || "");
    if (waiting) return `The server is waiting for the password of ${waiting[1]} first.`;
    if (/^no password was asked for/.test(text || "")) return "No password was asked for: choose a nickname first.";
    return "Choose a nickname first.";
  }

  let askPassword = false;
  let edited = false; // typed in since the last Join: not to be selected (replaced) again

  function showLogin(password, error) {
    $("login").hidden = false;
    $("app").hidden = true;
    banner(null);
    const input = $("nick-input");
    // The field held (or may hold) a password: it is never shown as text.
    const wasPassword = askPassword || input.type === "password";
    // A password being typed when the prompt turns back to the nick (a new
    // connection's RETRY): dropped, and the field is not focused, so that
    // the next keys land nowhere rather than in the nick, as text.
    const interrupted = !password && dropTypedPassword();
    askPassword = !!password;
    const submit = $("nick-submit");
    submit.disabled = false;
    // The password field may be left empty: Join then chooses another
    // nickname (the submit handler), as Enter alone does in the terminal client.
    input.required = !askPassword;
    $("nick-hint").hidden = askPassword;
    $("password-hint").hidden = !askPassword;
    if (askPassword) {
      $("login-title").textContent = `Password for ${state.wanted}`;
      input.type = "password";
      // A new connection under the password prompt keeps what is being typed.
      if (!wasPassword) input.value = "";
      input.placeholder = "password";
      $("nick-input").labels[0].textContent = "Password";
    } else {
      $("login-title").textContent = "Join the chat";
      if (wasPassword || !input.value) input.value = state.wanted;
      input.type = "text";
      input.placeholder = "e.g. alice";
      $("nick-input").labels[0].textContent = "Nickname";
    }
    $("nick-error").textContent = error || "";
    if (interrupted) {
      edited = false;
      return;
    }
    input.focus();
    if (!edited) input.select();
  }

  // What is in the password field and not sent is dropped (never shown, never
  // sent but as PASS) and the field loses the focus; true if there was some.
  function dropTypedPassword() {
    const input = $("nick-input");
    if (input.type !== "password" || !input.value) return false;
    input.value = "";
    input.blur();
    return true;
  }

  // Back at a prompt the server closed: a nick prompt connects again on the
  // first key or focus. A password prompt does not: a new connection's
  // answer (RETRY taken, READY) would change the prompt under the password
  // being typed. Join connects (queued), and the password is sent when the
  // server asks PASS for that nick.
  $("nick-input").addEventListener("input", () => {
    edited = true;
    if (!askPassword) wakeUp();
  });
  $("nick-input").addEventListener("focus", () => {
    if (!askPassword) wakeUp();
  });

  $("nick-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("nick-input").value;
    edited = false;
    if (askPassword && !value) {
      // Another nickname (the terminal client's "just Enter"): the nick
      // prompt, holding this one. The server, still waiting for this
      // nick's password, drops it when the next NICK comes
      // (docs/protocol.md, "Accounts"); nothing is sent until then.
      if (state.repass) state.repass.declined = true; // the PASS on its way is no prompt now
      showLogin(false, "Choose another nickname.");
      return;
    }
    if (askPassword) {
      // Held for a rejoin (it answers PASS for this nick), never left in the page.
      state.password = { nick: state.wanted, value };
      $("nick-input").value = "";
      if (state.repass) {
        // The NICK sent again after a wrong password is not answered yet:
        // the password goes once the server asks for it.
        state.queued = "pass";
        return;
      }
      if (!send("PASS " + value)) {
        state.queued = "pass"; // NICK, then this, once connected
        wakeUp();
      }
      return;
    }
    // The server judges the nick (RETRY invalid / taken shows its words).
    const nick = value.trim();
    if (!nick) return;
    const left = loginWaitLeft(nick);
    if (left) {
      $("nick-error").textContent = `Too many failed logins for ${state.loginWait.nick}: try again in ${left} s, or choose another nickname.`;
      return;
    }
    $("nick-error").textContent = "";
    // A held password belongs to its nick: another nick drops it.
    if (state.password && key(state.password.nick) !== key(nick)) state.password = null;
    state.wanted = nick;
    state.leaving = false;
    state.unavailableRetries = 0;
    state.floodRetries = 0;
    const waited = state.floodWait; // this Join is the NICK sent again
    if (waited) {
      stopCountDown();
      banner(null);
    }
    if (!send("NICK " + nick)) {
      state.queued = "nick"; // sent when the server asks for it
      if (waited && !state.ws) connect();
      else wakeUp();
    }
  });

  // -- accounts: /register and /passwd -------------------------------------------------------

  const ACCOUNT_ERRORS = {
    "accounts-off": () => "This server has no accounts.",
    "weak-password": (text) => `The server refused that password${text ? ": " + text : ""}.`,
    // The code alone does not say why: registered also answers REGISTER on
    // a server whose operator makes the accounts, and not-registered a
    // password the server could not store, or an account this connection
    // did not prove (made by the operator meanwhile). What was not done
    // (verb: what the page sent), then the server's reason.
    registered: (text, verb) => notDone(verb || "REGISTER", text),
    "not-registered": (text, verb) => notDone(verb, text),
    // Once online it answers REGISTER only: the server keeps no more accounts
    // (--max-accounts); the connection stays.
    "server-full": (text) => `The nickname was not registered${text ? ": " + text : ""}.`,
  };

  // How a cluster's ERROR unavailable begins when it answers REGISTER or
  // PASSWD (wire.ACCOUNTS_UNAVAILABLE, which server/accounts/login.py
  // writes): no other command gets these words.
  const ACCOUNTS_UNAVAILABLE = "the accounts cannot be reached";

  // How ERROR flood begins when it answers REGISTER or PASSWD, not done
  // (wire.PASSWORD_WORK_REFUSED): the password threads full, over the
  // address's share of the password work, or too many new hashes from the
  // address lately. Once online no other line gets these words (a flood
  // of lines is "slow down: ..."): the request is over.
  const PASSWORD_FLOOD_RE = /^(too much password work from your address at once|the server is busy|too many REGISTER and PASSWD from your address)\b/;

  function notDone(verb, text) {
    const lead = {
      REGISTER: "The nickname was not registered",
      PASSWD: "The password was not changed",
    }[verb] || "Nothing was changed";
    return `${lead}${text ? ": " + text.replace(/\.$/, "") : ""}.`;
  }

  // Control characters a person cannot mean to send (TAB is allowed by
  // chat/1): dropped from a message, as the terminal client drops them (a
  // pasted ESC, BEL or U+2028 would have the whole line refused with ERROR
  // bad-chars); a password that holds one is refused (passwordProblem).
  // /g: read with replace() and search(), which ignore lastIndex, never
  // with test().
  const UNSENDABLE = /[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]/g;

  // Why the server's REGISTER or PASSWD would refuse this password, for
  // the /register and /passwd dialog (docs/protocol.md, "Accounts": 8 to
  // 256 bytes, counted in its NFC form, which the server hashes and
  // stores; the line's free text starts at its first non-space character
  // and has no control characters), or null. A password over 1,024 bytes
  // (4 x 256: NFC shrinks UTF-8 at most 3.5 times) is counted as typed, as
  // the server's password_bytes (wire.py) does: normalising a long paste
  // of combining marks takes seconds.
  function passwordProblem(password) {
    const raw = utf8Length(password);
    const size = raw > 1024 ? raw : utf8Length(password.normalize("NFC"));
    if (size < 8) return "A password needs at least 8 bytes (characters, for plain ASCII).";
    if (size > 256) return "A password may have at most 256 bytes.";
    if (/^[ \t]/.test(password)) return "A password cannot start with a space or a tab.";
    if (password.search(UNSENDABLE) >= 0) {
      return "A password cannot contain control characters (TAB is allowed).";
    }
    return null;
  }

  let accountVerb = null; // "REGISTER" | "PASSWD" while the dialog is open

  function askAccountPassword(verb) {
    if (!state.online) {
      notice(current(), "Not connected: nothing was sent.", { error: true });
      return;
    }
    accountVerb = verb;
    $("password-title").textContent = verb === "REGISTER"
      ? `Protect ${state.me} with a password`
      : `A new password for ${state.me}`;
    $("password-about").textContent = verb === "REGISTER"
      ? "From then on, this nickname can only be used with the password."
      : "The password of your nickname is changed to this one.";
    $("password-submit").textContent = verb === "REGISTER" ? "Register" : "Change";
    $("password-new").value = "";
    $("password-again").value = "";
    $("password-error").textContent = "";
    $("password-dialog").showModal();
    $("password-new").focus();
  }

  function closePasswordDialog() {
    accountVerb = null;
    $("password-new").value = "";
    $("password-again").value = "";
    const dialog = $("password-dialog");
    if (dialog.open) dialog.close();
  }

  $("password-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const first = $("password-new").value;
    const again = $("password-again").value;
    const problem = passwordProblem(first) || (first !== again ? "The two passwords differ." : null);
    if (problem) {
      $("password-error").textContent = problem + " Nothing was sent.";
      $("password-new").value = "";
      $("password-again").value = "";
      $("password-new").focus();
      return;
    }
    const verb = accountVerb;
    closePasswordDialog();
    if (!verb) return;
    const sent = send(verb + " " + first);
    if (sent) {
      state.accountRequest = { verb, password: first };
    } else if (sent === false) {
      notice(current(), "Not connected: nothing was sent.", { error: true });
    }
    if (state.online) $("composer-input").focus();
  });
  // Enter in the first field goes on to the second while that one is empty
  // (as Tab would), rather than submitting half a form.
  $("password-new").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing && !$("password-again").value) {
      event.preventDefault();
      $("password-again").focus();
    }
  });
  $("password-cancel").addEventListener("click", () => {
    closePasswordDialog();
    $("composer-input").focus();
  });
  // Escape closes the dialog by itself: the fields are emptied all the same.
  $("password-dialog").addEventListener("close", closePasswordDialog);

  const HELP = [
    "Commands:",
    "@NICK TEXT — a direct message to NICK, as in the terminal client (also /dm NICK TEXT, /msg)",
    "/invite NICK — invite NICK to a private conversation (also /pair)",
    "/leave — leave the private conversation, or withdraw your invitation (also /unpair)",
    "/accept [NICK], /reject [NICK] — answer an invitation (also /decline; the one open, if only one)",
    "/users — who is online, listed here (also /who, /names)",
    "/register — protect your nickname with a password (asked for twice, not shown)",
    "/passwd — change that password (also /password)",
    "/quit [TEXT] — leave, with an optional goodbye",
    "/help VERB — the server's help on a chat/1 verb",
    "//TEXT — a message that starts with / (/TEXT)",
  ];

  // -- the composer ----------------------------------------------------------------------

  // ERROR codes that refuse a message, told in the page's words (the
  // server's are the protocol's): each says the message was not sent
  // (refused()). The message refused is the oldest unconfirmed one it can
  // be about (the list of the messages sent and not yet answered:
  // answers.unconfirmed). A "not sent: why" whose pair changed is the
  // user's words too: pairChanged().
  const REFUSED = new Set(["no-such-nick", "self", "busy", "too-long", "bad-chars", "bad-encoding"]);

  // ERROR busy answering a DM (or a MSG the server sent to the partner),
  // not an invitation: "<nick> is not reading fast enough to take more
  // private messages; try again later" (the reader is far behind:
  // docs/protocol.md, Limits 14; the words are wire.PRIVATE_MESSAGES). Its
  // other texts answer PAIR or ACCEPT.
  const BEHIND_RE = /^(\S+) .*\bprivate messages\b/;

  // How ERROR busy's text begins for a lobby line held behind our REGISTER
  // or PASSWD while an ACCEPT paired us, and ERROR not-paired's for a line
  // meant for our partner when the pair ended meanwhile: it went nowhere
  // (wire.NOT_SENT).
  const NOT_SENT = "not sent: ";

  // ERROR unavailable "not sent" answering a MSG whose sender's pair changed
  // before it was delivered (docs/cluster.md, "What is guaranteed", DMs and
  // pairing): the only unavailable texts that answer a message alone, as the
  // terminal client tells them (wire.PAIR_CHANGED).
  const PAIR_CHANGED_RE = /^not sent: (it was meant for the lobby|you were (not|no longer) paired with) /;

  // The server's text as a sentence, "not sent: why" as "Not sent: why.",
  // as the terminal client says it (client/render.py, server_reason).
  function serverReason(text) {
    const said = (text[0] || "").toUpperCase() + text.slice(1).trim();
    return /[.!?]$/.test(said) || !said ? said : said + ".";
  }

  // A "not sent" answering a MSG whose pair changed before it was
  // delivered (busy: a lobby line held behind our REGISTER or PASSWD while
  // an ACCEPT paired us; not-paired: one meant for the partner, held while
  // the pair ended; unavailable: a cluster's). A not-paired without it
  // answers an UNPAIR; a busy, an invitation or a reader far behind.
  function pairChanged(code, text) {
    return (code === "busy" || code === "not-paired") ? text.startsWith(NOT_SENT)
      : code === "unavailable" && PAIR_CHANGED_RE.test(text);
  }

  // The oldest MSG (the page sends the partner DMs) went nowhere: said in
  // the server's words, and settled.
  function settlePairChanged(text) {
    const m = takeUnconfirmed((u) => u.to === null);
    const said = serverReason(text);
    if (m) tellIn(m.conv, said);
    else notice(current(), said, { error: true });
  }

  function refused(code, text) {
    if (code === "self") {
      // A DM to yourself (ERROR self also answers an invitation to yourself,
      // which refuses no message: the server's words then).
      const m = state.me ? takeUnconfirmed((u) => u.to === key(state.me)) : null;
      if (!m) return notice(current(), pageWords(text), { error: true });
      return tellIn(m.conv, "Not sent: you cannot send a private message to yourself.");
    }
    if (code === "no-such-nick") {
      const nick = parse(text, 1)[0];
      const m = NICK_RE.test(nick) ? takeUnconfirmed((u) => u.to === key(nick)) : null;
      if (!m) return notice(current(), text ? `Not sent: ${text.replace(/\.$/, "")}.` : "Not sent: nobody by that name is online.", { error: true });
      const said = m.partner
        ? `Not sent: ${nick} has left the chat, and your private conversation with them is over.`
        : `Not sent: ${nick} is not online.`;
      return tellIn(m.conv, said);
    }
    if (code === "busy") {
      // A message to a reader far behind: the oldest DM to them, else the
      // oldest MSG (the server routes a MSG by the pair it knows when it
      // reads it). Any other busy refuses an invitation: the server's words.
      const nick = (BEHIND_RE.exec(text) || [])[1];
      if (!nick || !NICK_RE.test(nick)) return notice(current(), pageWords(text), { error: true });
      const m = takeUnconfirmed((u) => u.to === key(nick)) || takeUnconfirmed((u) => u.to === null);
      const said = `Not sent: ${nick} is not reading fast enough to take more messages; try again later.`;
      if (!m) return notice(current(), said, { error: true });
      return tellIn(m.conv, said);
    }
    if (code === "too-long") {
      // "lines may be at most 4096 bytes": the oldest message longer than that.
      const most = Number((/at most (\d+) bytes/.exec(text) || [])[1]) || 0;
      const m = takeUnconfirmed((u) => u.bytes > most);
      const limit = most ? ` (at most ${most} bytes a line)` : "";
      if (!m) return notice(current(), `That line was too long for the server${limit} and was not sent.`, { error: true });
      const back = putBack(state.convs.get(m.conv), m.typed);
      const said = most ? tooLongSaid(m.bytes, m.text, most) : "Your message was too long for the server and was not sent.";
      return tellIn(m.conv, `${said}${back}`);
    }
    // bad-chars, bad-encoding: the oldest message with other than printable
    // ASCII or TAB, the only kind that can be refused for its characters
    // (the page leaves out those chat/1 forbids: a server stricter than
    // chat/1, refusing say a bidi override, refused it); none: a command.
    const why = code === "bad-chars" ? "contained control characters" : "was not valid UTF-8";
    const m = takeUnconfirmed((u) => /[^\t\x20-\x7e]/.test(u.text));
    if (!m) return notice(current(), `That line ${why} and was not sent.`, { error: true });
    tellIn(m.conv, `Your message ${why} and was not sent.`);
  }

  // A line `typed` in `conv` and not sent goes back to that conversation's
  // message box, if it is empty (the composer when `conv` is shown, else
  // its draft): the words that say so, to end a "too long" notice, or "".
  function putBack(conv, typed) {
    if (!conv) return "";
    const input = $("composer-input");
    if (conv === current()) {
      if (input.value) return "";
      input.value = typed;
      return " It is back in the message box, to shorten.";
    }
    if (conv.draft) return "";
    conv.draft = typed;
    return " It is back in its message box, to shorten.";
  }

  // An error about conversation `id`: told there, and where the user is.
  function tellIn(id, text) {
    const conv = state.convs.get(id);
    if (conv) notice(conv, text, { error: true });
    if (!conv || conv !== current()) notice(current(), text, { error: true });
  }

  // "@NICK TEXT", and "/dm NICK TEXT" (or /msg): the DM line, its
  // conversation shown; or null: the problem is said in `conv` and the
  // line `typed` is back in its box, to mend. One rule for both, as the
  // terminal client's one _dm (commands.py): a DM with no text, or to no
  // valid nickname, is not sent. `usage` is the form typed.
  function dmLine(conv, typed, nick, body, usage) {
    let problem = null;
    if (!nick || !/[^ \t]/.test(body)) problem = `Usage: ${usage} (a direct message to NICK). Nothing was sent.`;
    else if (!NICK_RE.test(nick)) problem = `“${nick}” is not a valid nickname (letters, digits, _ and -, starting with a letter). Nothing was sent.`;
    if (problem) {
      notice(conv, problem, { error: true });
      const input = $("composer-input");
      if (!input.value) input.value = typed;
      return null;
    }
    show(dm(nick).id);
    return `DM ${nick} ${body}`;
  }

  // The server's errors name chat/1 verbs ("usage: PAIR <nick>", "UNPAIR
  // first", "UNPAIR withdraws it", "(REJECT declines one you received)",
  // "try HELP", "slow down: USERS costs ...": wire.list_cost): said with
  // the page's commands, as the terminal client says them with its own
  // (render.py, which does so in invitation refusals only). Only in those
  // places: a nick may be spelled as a verb ("your invitation to HELP is
  // still open").
  const PAGE_COMMANDS = { UNPAIR: "/leave", PAIR: "/invite", ACCEPT: "/accept", REJECT: "/reject", HELP: "/help", USERS: "/users" };
  const VERB_PLACES = /(?<=\busage: |\btry )(?:UNPAIR|PAIR|ACCEPT|REJECT|HELP)\b|\b(?:UNPAIR|PAIR|ACCEPT|REJECT|HELP|USERS)(?= (?:first|withdraws|declines|costs)\b)/g;
  function pageWords(text) {
    return text.replace(VERB_PLACES, (verb) => PAGE_COMMANDS[verb]);
  }

  // "/accept [NICK]", "/reject [NICK]" (or /decline), as in the terminal
  // client (commands.py): bare, the only invitation open. An open one is
  // answered by its card's button (the card goes, as when it is pressed);
  // true when done (or said), false: `nick` is sent as typed, for the
  // server to answer.
  function answerInvite(conv, name, nick) {
    const inviters = [...state.invites.values()].map((card) => card.dataset.inviter);
    const accept = name.toLowerCase() === "accept";
    if (!nick && inviters.length !== 1) {
      // None open (it expired, was withdrawn): said so, as the terminal
      // client says it; the nick is optional, so not a usage.
      notice(conv, inviters.length
        ? `${inviters.length} invitations are open (${inviters.slice(0, 3).join(", ")}): /${name} ${inviters[0]}, for instance. Nothing was sent.`
        : `There is no open invitation to ${name.toLowerCase()}. Nothing was sent.`, { error: true });
      return true;
    }
    const card = state.invites.get(key(nick || inviters[0]));
    if (!card) return false;
    card.querySelector(accept ? "button.accept" : "button.reject").click();
    return true;
  }

  function submitMessage(typed) {
    if (!typed.trim()) return;
    const conv = current();
    let line = null;
    // "//text" is a message "/text", as in the terminal client: a line may
    // start with a slash ("/etc/hosts is missing").
    const escaped = typed.startsWith("//");
    const text = escaped ? typed.slice(1) : typed;
    // Any other line that starts with "/" is a command, its name all up to
    // the first blank, as in the terminal client (commands.py): "/?" is
    // /help; "/", "/ hi", "/é" and "/quit!" are unknown, and not sent.
    const cmd = escaped ? null : /^\/([^ \t]*)[ \t]*(.*)$/s.exec(text);
    // "@NICK TEXT" is a direct message to NICK, wherever it is typed: the
    // terminal client's meaning (docs/client.md). It was a lobby message
    // here, so a line meant for one person went to everyone, and into the
    // lobby's history. "@ text" (a blank after @) and "//@…" are messages.
    const at = !escaped && /^@\S/.test(text) ? parse(text.slice(1), 1) : null;
    if (at) {
      const [nick, body] = at;
      line = dmLine(conv, typed, nick, body, "@NICK TEXT");
      if (line === null) return;
    } else if (cmd) {
      const [, name, rest] = cmd;
      const [arg, body] = parse(rest, 1);
      switch (name.toLowerCase()) {
        case "help": case "?":
          if (!rest) {
            for (const text of HELP) notice(conv, text);
            return;
          }
          line = "HELP " + rest;
          break;
        case "quit": line = rest ? "BYE " + rest : "BYE"; break;
        case "dm": case "msg":
          line = dmLine(conv, typed, arg, body, `/${name} NICK TEXT`);
          if (line === null) return;
          break;
        case "invite": case "pair":
          if (!arg) {
            notice(conv, `Usage: /${name} NICK (invite NICK to a private conversation). Nothing was sent.`, { error: true });
            return;
          }
          line = "PAIR " + arg;
          break;
        case "leave": case "unpair": line = "UNPAIR"; break;
        case "users": case "who": case "names": line = "USERS"; break;
        case "accept": case "reject": case "decline":
          if (answerInvite(conv, name, arg)) return;
          line = `${name.toLowerCase() === "accept" ? "ACCEPT" : "REJECT"} ${arg}`;
          break;
        case "register": case "passwd": case "password":
          // Never the password on the command line (on screen, in the history
          // Up recalls): a dialog asks for it; the command is not kept either.
          if (rest.trim()) {
            notice(conv, `Type /${name} alone: the password is asked for without showing it. Nothing was sent.`, { error: true });
          } else {
            askAccountPassword(name.toLowerCase() === "register" ? "REGISTER" : "PASSWD");
          }
          return;
        default: {
          const shown = name.length <= 20 ? name : name.slice(0, 20) + "…";
          notice(conv, `Unknown command /${shown}. Try /help, /dm NICK TEXT, /invite NICK, /leave, /register, /quit; //${shown}… sends a message that starts with /${shown}.`, { error: true });
          return;
        }
      }
    } else if (conv.id === "lobby") {
      line = "MSG " + text;
    } else {
      // A DM, also in the private conversation: a MSG there would be routed
      // by the pair the server knows when it reads it, and one that crosses
      // the partner's leaving (UNPAIR, or their disconnection) would go to
      // the whole lobby, and into its history. A DM goes to that person
      // only, or to nobody (ERROR no-such-nick); its copy back is the same.
      line = `DM ${conv.peer} ${text}`;
    }
    if (tooLong(line)) {
      // Not sent: the server's line limit is known (<html data-max-line>),
      // and a line far over it (a paste) would cost the connection
      // (WebSocket close 1009). Said as the server's ERROR too-long is.
      const back = putBack(conv, typed);
      // Told where it was typed and where the user now is (a DM switched
      // to its conversation), as the server's own too-long error is.
      const message = sentMessage(line, typed); // null: a command
      tellIn(conv.id, `${tooLongSaid(utf8Length(line), message ? message.text : line, MAX_LINE)}${back}`);
      return;
    }
    const sent = send(line, sentMessage(line, typed));
    if (sent && line === "USERS") state.listFor = conv.id;
    if (sent) {
      state.sent.push(typed);
      if (state.sent.length > 100) state.sent.shift();
    } else if (sent === null) {
      // Too many lines held (said by send): back in the message box it was
      // typed in (a /dm switched away from it), if that one is empty.
      putBack(conv, typed);
    } else {
      notice(conv, "Not connected: the message was not sent.", { error: true });
    }
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("composer-input");
    const text = input.value.replace(/[\r\n]+/g, " ").replace(UNSENDABLE, "");
    // Emptied first: a command may switch conversations (/dm opens one),
    // and the line is not a draft of the one it was typed in.
    input.value = "";
    submitMessage(text);
    state.recall = -1;
  });

  $("composer-input").addEventListener("keydown", (event) => {
    const input = event.target;
    if (event.key === "ArrowUp" && state.sent.length && (state.recall >= 0 || !input.value)) {
      event.preventDefault();
      if (state.recall < 0) {
        state.draft = input.value;
        state.recall = state.sent.length;
      }
      state.recall = Math.max(0, state.recall - 1);
      input.value = state.sent[state.recall];
    } else if (event.key === "ArrowDown" && state.recall >= 0) {
      event.preventDefault();
      state.recall += 1;
      if (state.recall >= state.sent.length) {
        state.recall = -1;
        input.value = state.draft;
      } else {
        input.value = state.sent[state.recall];
      }
    } else if (event.key === "Escape") {
      state.recall = -1;
      input.value = "";
    }
  });

  $("leave-button").addEventListener("click", () => send("UNPAIR"));
  $("invite-button").addEventListener("click", () => {
    const conv = current();
    if (conv.peer) send("PAIR " + conv.peer);
  });
  $("menu-button").addEventListener("click", () => {
    const open = !$("app").classList.contains("menu-open");
    setMenu(open);
    // The drawer (phone width) shows who is online: an old list is asked for again.
    if (open) pollRoster(true);
  });
  $("messages").addEventListener("click", () => setMenu(false));

  // -- start -------------------------------------------------------------------------------

  $("users-more").title = `The list keeps at most ${USERS_MAX.toLocaleString("en")} people, and only valid nicknames.`;
  lobby();
  show("lobby");
  connect();
})();
