"""
The documentation against itself and the code, where that is cheap to
check: cross-references name sections that exist, and a few statements a
review found wrong (rev11) say what the code does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from twisted_chat.server.config import ServerConfig

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The code's docstrings and comments point into the docs the same way, and
# so do the tests' (but this file's, which show the forms).
CODE = sorted([*(ROOT / "twisted_chat").rglob("*.py"),
               *(path for path in (ROOT / "tests").rglob("*.py") if path != Path(__file__))])

# `README, "Section"`, `docs/x.md, "Section"`, `[x.md](x.md), "Section"`, and
# `docs/x.md ("Section", "Section")`.
REFERENCE = re.compile(
    r'(README(?:\.md)?|(?:docs/)?([a-z]+)\.md(?:\]\([^)]*\))?)'
    r'(?:,\s+"([^"]+)"|\s+\(("[^"]+"(?:,\s+"[^"]+")*)\))')


def headings(path: Path) -> set[str]:
    return {re.sub(r"^#+\s*", "", line).strip()
            for line in path.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def references() -> list[tuple[str, Path, str]]:
    found = []
    for path in [*DOCS, *CODE]:
        text = path.read_text()
        if path.suffix == ".py":
            # A comment's reference may wrap: its next line's "#" is a space
            # (the same length, so the line numbers hold).
            text = re.sub(r"(?m)^(\s*)#", r"\1 ", text)
        for match in REFERENCE.finditer(text):
            if match.group(1).startswith("README"):
                target = ROOT / "README.md"
            else:
                target = ROOT / "docs" / f"{match.group(2)}.md"
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            one, listed = match.group(3), match.group(4)
            sections = [one] if one else re.findall(r'"([^"]+)"', listed)
            found.extend((where, target, " ".join(section.split())) for section in sections)
    return found


def test_there_are_cross_references_to_check() -> None:
    assert len(references()) >= 20
    in_code = [where for where, _, _ in references() if where.startswith("twisted_chat/")]
    assert len(in_code) >= 20, in_code
    in_tests = [where for where, _, _ in references() if where.startswith("tests/")]
    assert len(in_tests) >= 20, in_tests
    bracketed = [section for _, _, section in references() if section == "Exit status and errors"]
    assert bracketed, "the docs/x.md (\"Section\") form is read (client/outbox.py)"


@pytest.mark.parametrize(("where", "target", "section"), references(),
                         ids=[where for where, _, _ in references()])
def test_a_cross_reference_names_a_section_of_its_file(
        where: str, target: Path, section: str) -> None:
    """docs/metrics.md sent readers to the README's "Why lobby lines may
    wait", which it does not have (it is "When lobby lines leave"), and
    docs/security.md to docs/cluster.md's "Options", a list, not a section
    (and addresses.py's docstring too, which this test did not read then).
    A heading may be named by its part before a colon ("The hash")."""
    assert target.exists(), where
    named = {heading.split(":")[0] for heading in headings(target)} | headings(target)
    assert section in named, f"{where}: no section {section!r} in {target.name}"


def test_the_handshake_pool_default_is_the_one_the_docs_state() -> None:
    """A quarter of --max-clients (rounded down), at least 16, at most
    --max-clients: docs/protocol.md once said only "a quarter"."""
    def pool(max_clients: int) -> int:
        return ServerConfig(max_clients=max_clients).handshake_limit

    assert [pool(n) for n in (10_000, 100, 67, 64, 20, 16, 10, 1)] == [
        2500, 25, 16, 16, 16, 16, 10, 1]
    stated = "a quarter of `--max-clients` (rounded down), at least 16 (at most `--max-clients`)"
    for name in ("README.md", "docs/protocol.md", "docs/security.md"):
        rows = [line for line in (ROOT / name).read_text().splitlines()
                if re.match(r"\| (`--max-handshaking-per-ip` / )?`--max-handshaking` \|", line)]
        assert len(rows) == 1 and stated in rows[0], (name, rows)
    protocol = " ".join((ROOT / "docs" / "protocol.md").read_text().split())
    assert ("(`--max-handshaking`, default a quarter of `--max-clients`, rounded down, "
            "but at least 16, or `--max-clients` itself if that is less: 2,500 at the "
            "default 10,000, 16 at 20, 10 at 10)") in protocol


def test_the_load_balancer_recipe_exempts_the_proxy() -> None:
    """docs/cluster.md advised only a larger --max-per-ip behind a TCP load
    balancer: every other per-address limit then counted all its users as
    one (5 choosing a nick at once, one guesser locking everyone out of
    PASS).  It now says to --exempt the proxy, what that gives up, and that
    there is no PROXY protocol."""
    text = " ".join((ROOT / "docs" / "cluster.md").read_text().split())
    assert "give the nodes a larger `--max-per-ip`" not in text
    assert "give every node **`--exempt` with the proxy's address**" in text
    assert "Raising `--max-per-ip` alone leaves all of that in place." in text
    assert "the chat port does not read the PROXY protocol" in text


def test_the_metrics_methods_are_the_ones_the_docs_state() -> None:
    from twisted_chat.server.metrics.metricsport import ALLOWED_METHODS

    text = (ROOT / "docs" / "security.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| requests |"))
    assert f"`Allow: {ALLOWED_METHODS}`" in row
    assert "`GET` or `HEAD` `/metrics`" in row


PACKAGES = ["client", "server", "server/accounts", "server/cluster", "server/limits",
            "server/metrics", "server/output", "server/ports", "web"]


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_docstring_names_every_module(package: str) -> None:
    """cluster/__init__ named 3 of its 8 modules (rev11-shape2 S10): a new
    module is named where a reader looks for the layout."""
    folder = ROOT / "twisted_chat" / package
    text = (folder / "__init__.py").read_text()
    modules = [path.stem for path in sorted(folder.glob("*.py"))
               if not path.stem.startswith("__")]
    assert modules
    assert [name for name in modules if f"L{{{name}}}" not in text] == []


def listed_modules() -> dict[str, set[str]]:
    """The modules README's layout ("The code, inside out") lists, by
    folder: a list belongs to the folder the last paragraph before it named
    (the server's lists after "The domain" name none), and a bullet names a
    top-level module by its path.  The client's are listed in
    docs/client.md, "How it works", as the README says."""
    text = (ROOT / "README.md").read_text()
    start = text.index("The code, inside out")
    end = re.compile(r"^#{1,6} ", re.M).search(text, start)
    section = text[start:end.start() if end else None]
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in section.splitlines():
        bullet = re.match(r"- `([a-z_]+)\.py`", line)
        top = re.match(r"- `twisted_chat/([a-z_]+)\.py`", line)
        if top:
            listed.setdefault("", set()).add(top.group(1))
        elif bullet:
            listed.setdefault(folder, set()).add(bullet.group(1))
        elif line and not line.startswith(" "):
            named = re.search(r"`twisted_chat/([a-z/]+)/`", line)
            if named:
                folder = named.group(1)
    client = (ROOT / "docs" / "client.md").read_text()
    works = client[client.index("## How it works"):]
    listed["client"] = set(re.findall(r"(?m)^- `([a-z_]+)\.py`", works))
    return listed


@pytest.mark.parametrize("package", ["", *PACKAGES])
def test_the_readme_layout_names_every_module(package: str) -> None:
    """README's module list still gave redislog.py the leases and snapshots
    after the split, and named 9 of the cluster's modules not at all
    (reread12 #2): every module is listed, in its folder's list."""
    folder = ROOT / "twisted_chat" / package
    modules = {path.stem for path in folder.glob("*.py") if not path.stem.startswith("__")}
    assert modules
    assert sorted(modules - listed_modules().get(package, set())) == []

    """docs/metrics.md lists every metric a single server and a cluster node
    serve, as Prometheus shows them (counters with _total, info with _info),
    and no chat_ metric that is not served."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_cluster_unit import Cluster
    from twisted_chat.server.cluster.metrics import ClusterCollector
    from twisted_chat.server.metrics.counters import Snapshot, Stats, registry_for

    node = Cluster(1).nodes[0]
    registry = registry_for(Stats(), lambda: Snapshot(0, 0, 0, 0, history_messages=0),
                            ClusterCollector(node.state))
    served = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        served.add(family.name + suffix)
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert "chat_build_info" in served and "chat_history_messages" in served
    # A row of its own for each chat_ metric (the process's share one).
    documented = set(re.findall(r"^\| `(chat_[a-z_]+)`", text, re.MULTILINE))
    assert sorted(name for name in served
                  if name not in documented and f"`{name}`" not in text) == []
    assert sorted(name for name in served
                  if name.startswith("chat_") and name not in documented) == []
    assert sorted(documented - served) == []


def test_the_readme_options_table_lists_every_server_option() -> None:
    """README's "Options" table against C{twistd chat}'s own options (rev12
    found --set-retention missing: nothing compared the two)."""
    from twisted_chat.server.service import Options

    options = Options()
    names = {flag[0] for flag in options.optFlags}
    names |= {parameter[0] for parameter in options.optParameters}
    # Options with a method (repeatable ones, --port); --help and --version
    # print and exit (the table is of the server's settings), and -p is
    # --port's short form.
    names |= {name[4:].replace("_", "-") for name in dir(options)
              if name.startswith("opt_") and len(name) > 5}
    names -= {"help", "version"}
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n### Options\n", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"`--([a-z0-9-]+)`", table))
    assert sorted(names - listed) == []
    assert sorted(listed - names) == []


def test_the_cluster_only_answers_are_set_apart_from_chat1s_lists() -> None:
    """rev13-proto LOW-2: docs/protocol.md put RETRY unavailable, ERROR
    unavailable and ERROR unconfirmed (cluster mode only) into lists chat/1
    gives as complete, which a client written from chat/1 alone reads as
    closed.  Its Errors list is chat/1's: every code the server has but
    those two.  The three are set apart in a section of their own, saying
    one server never sends them and what such a client sees and does, and
    every section that names them points there."""
    from twisted_chat.wire import ErrorCode

    text = (ROOT / "docs" / "protocol.md").read_text()
    sections = {part.splitlines()[0]: " ".join(part.split())
                for part in re.split(r"\n(?=## )", text)}
    beyond = "Beyond chat/1: cluster mode"
    cluster_only = {ErrorCode.UNAVAILABLE, ErrorCode.UNCONFIRMED}
    errors = sections["## Errors"].split("That is chat/1's complete list.")[0]
    listed = re.findall(r"`([a-z-]+)`", errors)
    beyond_chat1 = cluster_only | {ErrorCode.INTERNAL}  # INTERNAL: the next test
    assert listed == [code.value for code in ErrorCode if code not in beyond_chat1]
    assert len(listed) == 19
    own = sections[f"## {beyond}"]
    assert "the `ERROR` codes (the nineteen under Errors)" in own
    assert "the `RETRY` reasons (`taken`, `invalid`, `bad-password`)" in own
    for line in ("RETRY unavailable", "ERROR unavailable", "ERROR unconfirmed"):
        assert f"| `{line} <text>` |" in own
    assert "One server (no `--redis`) never sends them" in own
    assert "A client written from chat/1 alone" in own
    naming = [head for head, body in sections.items()
              if re.search(r"unavailable|unconfirmed", body) and head != f"## {beyond}"]
    assert "## Errors" in naming and "## Handshake" in naming
    assert [head for head in naming if f'"{beyond}"' not in sections[head]] == []


def test_error_internal_is_set_apart_as_a_departure_with_the_text_sent() -> None:
    """left16s: a command the server fails on itself is answered ERROR
    internal, a code chat/1's complete list does not have: the Errors
    section names it beyond that list, and the departures table gives the
    line as the server sends it."""
    from twisted_chat.server.session import _INTERNAL_TEXT

    sections = _protocol_sections()
    errors = sections["## Errors"].split("That is chat/1's complete list.")[1]
    assert "`internal`" in errors
    assert '"Where this server departs from chat/1 as published"' in errors
    departures = sections["## Where this server departs from chat/1 as published"]
    assert f"`ERROR internal {_INTERNAL_TEXT}`" in departures


def test_nothing_points_at_a_contract_file_the_repository_does_not_have() -> None:
    """docs/protocol.md is the project's description of chat/1; the
    upstream contract's file name (PROTOCOL.md) is not in the repository,
    so no doc, docstring or test may send a reader there."""
    tests = sorted((ROOT / "tests").rglob("*.py"))
    named = [str(path.relative_to(ROOT)) for path in [*DOCS, *CODE, *tests]
             if "PROTOCOL.md" in path.read_text() and path != Path(__file__)]
    assert not (ROOT / "PROTOCOL.md").exists()
    assert named == []


def test_the_docs_name_no_script_or_issue_a_reader_cannot_find() -> None:
    """rev22-docs F5: docs named review scripts behind measured figures
    (timing.py, s7_pairedleave_perf.py, ...) and "issue 13", none of which
    the repository has.  Every Python file README and docs/ name is in the
    tree (but Twisted's own, named as Twisted's), and no doc points at an
    issue: the fan-out targets are listed in docs/benchmark.md itself."""
    tops = [top for top in ROOT.iterdir() if not top.name.startswith(".") and top.name != "build"]
    tree = {path.relative_to(ROOT).as_posix() for top in tops
            for path in (top.rglob("*.py") if top.is_dir() else [top]) if path.suffix == ".py"}
    names = {path.rsplit("/", 1)[-1] for path in tree}
    twisteds = {"protocols/irc.py"}  # docs/fanout.md: twisted.words' module
    for doc in DOCS:
        text = doc.read_text()
        for named in set(re.findall(r"[A-Za-z0-9_./-]+\.py\b", text)) - twisteds:
            assert named in tree or named.rsplit("/", 1)[-1] in names, (doc.name, named)
        assert not re.findall(r"(?i)\bissue \d+", text), doc.name
    benchmark = " ".join((ROOT / "docs" / "benchmark.md").read_text().split())
    targets = benchmark.split("**The fan-out targets**")[1].split("Against them, plainly:")[0]
    for target in ("no more than 2x ngircd's", "no more than 1.5x ngircd's",
                   "at least 1.5x the best of ngircd and InspIRCd",
                   "server CPU per delivered line no more than theirs", "Under contention",
                   "RSS per idle connection no more than InspIRCd's"):
        assert target in targets, target


def _protocol_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    return {part.splitlines()[0]: " ".join(part.split())
            for part in re.split(r"\n(?=## )", text)}


def test_the_failed_login_limits_are_the_ones_the_code_sets() -> None:
    """rev15-docs H1: docs/protocol.md still gave one bucket per nick (5,
    then one a minute, "at most 5 checks" however many addresses), after
    login.py had three: the nick from one address, the nick from all, the
    address.  Its "Failed attempts" paragraph states the three with
    LoginLimits' numbers."""
    from twisted_chat.server.accounts.loginlimits import LoginLimits

    limits = LoginLimits()
    minutes = {60.0: "minute", 30.0: "30 seconds"}
    accounts = _protocol_sections()["## Accounts"]
    failed = accounts.split("**Failed attempts.**")[1].split("**Timeouts.**")[0]
    assert (f"**the nick from your address**: {limits.nick_burst}, then one more per "
            f"{minutes[limits.nick_every]};") in failed
    assert (f"**the nick from all addresses together**: {limits.nick_total_burst}, then one "
            f"more per {minutes[limits.nick_total_every]};") in failed
    assert (f"**your address, whatever the nick**: {limits.address_burst}, then one more per "
            f"{minutes[limits.address_every]}.") in failed
    assert (f"at most {limits.nick_burst} from one address, and {limits.nick_total_burst} "
            f"from all addresses, are checked (and from one address at most "
            f"{limits.address_burst}, whatever the nicks)") in failed
    assert f"after {limits.flood_delay:g} seconds the connection gets `BYE flood" in failed
    assert "at most 5 checks between them" not in failed
    assert "a nick may fail 5 times in a row" not in failed


def test_every_departure_from_chat1_as_published_is_listed() -> None:
    """rev15-docs M1: docs/protocol.md's introduction said it stayed within
    chat/1 but for cluster mode, while several of its rules go against a
    sentence of chat/1 as published (incoming invitations capped, a TLS
    refusal reset without a word, ...).  The introduction now says so and
    points at one section, which lists each: the published rule, this
    server's, why."""
    sections = _protocol_sections()
    departs = "Where this server departs from chat/1 as published"
    intro = sections["# chat/1"]
    assert "Everything here stays within chat/1" not in intro
    assert f'"{departs}" lists every one of them' in intro
    assert f'"{departs}" lists those.' in sections["## Limits this server sets"]
    own = sections[f"## {departs}"]
    assert "| chat/1 as published | this server | why |" in own
    raw = (ROOT / "docs" / "protocol.md").read_text().split(f"## {departs}\n")[1]
    rows = [line for line in raw.split("\n## ")[0].splitlines()
            if line.startswith("| ") and not line.startswith("| chat/1 as published |")]
    published = {
        "check order": "Each line is checked first for its length (`too-long`)",
        "history": "A newcomer gets the last `--history` lobby messages",
        "NICK's answers": "`NICK` is answered `RETRY`, `PASS` or `READY`",
        "flood": "`ERROR flood` is for a line over `--flood-rate`",
        "TLS records": '"Every complete line counts for flood control"',
        "DM": "`DM`: `ERROR self` to oneself, `ERROR no-such-nick`",
        "invitations received": '"Incoming invitations are not limited."',
        "invitations per address": "`ERROR pending`: the user has an invitation out already",
        "held MSG": "`MSG` goes to the lobby, or to the partner while paired",
        "PASSWD": "`PASSWD`, after `READY` with an account, changes its password",
        "REGISTER": "`REGISTER` is answered `REGISTERED`, or `ERROR registered`",
        "bad-password": "`RETRY bad-password`: a wrong password or, under `required`",
        "nick spelling": "The server always writes a nick as its owner spelled it",
        "LEFT text": "The `LEFT` text is the quitting user's `BYE` text",
        "sendq": "beyond what the operating system accepted passes `--sendq`",
        "refusals": "the server's first and only lines are `ERROR server-full` and `BYE full`",
        "handshake pool": "`BYE full` ends a connection refused over a limit",
        "the server's own fault": "`ERROR <code> <text>`: the code is one of nineteen",
        "held before READY": "A client that keeps flooding (over `--flood-rate`",
        "RETRY reasons": "The `RETRY` reasons are `taken`, `invalid` and `bad-password`",
        "ERROR codes": "The `ERROR` codes are the nineteen under Errors",
        "order vs replay": "\"nothing from a user comes after that user's `LEFT`\" (Ordering)",
        "accounts-off": "\"`PASS` when no password was asked is `ERROR not-ready`\"",
        "an address": "`--max-per-ip` connections from one address (default 20)",
        "password length": '"A password is 8 to 256 bytes of the line"',
    }
    for what, sentence in published.items():
        assert sentence in own, what
    assert len(rows) == len(published), rows
    for option in ("--max-invites", "--max-invites-per-ip", "--sendq-timeout", "--sendq-total",
                   "--history-bytes", "--ip-register-rate", "--ip-lobby-rate",
                   "--max-accounts", "--max-handshaking"):
        assert f"`{option}`" in own, option
    assert "reset with not a byte" in own
    assert '"Beyond chat/1: cluster mode"' in own


def test_the_order_rule_names_the_replay_after_unpaired_as_its_exception() -> None:
    """rev20-docs F1: "nothing from a user comes after that user's LEFT"
    was stated without exception, while the replay after UNPAIRED (chat/1's
    own, tests/test_lobby_return.py) sends HISTORY lines of a user whose
    LEFT came live during the pair.  Both places say so, and the departures
    table names chat/1's contradiction and which side the server takes."""
    sections = _protocol_sections()
    order = sections["## Timing and order"]
    rule = "nothing from a user comes after that user's `LEFT`."
    assert f"{rule} The one exception is the replay after `UNPAIRED`" in order
    assert "a replayed line may be from a user whose `LEFT`" in order
    assert "must not drop a `HISTORY` line for coming from a user it saw leave" in order
    assert ("so it contradicts itself here; this server follows "
            "\"Coming back to the lobby\"") in order
    replay = sections["## Coming back to the lobby"]
    assert ("**Order**: the replay comes after the `JOINED` and `LEFT` lines sent live "
            "during the pair") in replay
    departs = sections["## Where this server departs from chat/1 as published"]
    assert ("Two rows are where chat/1 as published contradicts itself (its order rule and "
            "its replay after `UNPAIRED`; its check order and `accounts-off`)") in departs
    assert "chat/1 contradicts itself here, and this server follows its later section" in departs


def test_accounts_off_comes_before_the_state_check_and_a_slash_64_is_one_address() -> None:
    """rev22-docs F2, F3: under --accounts off, PASS, REGISTER and PASSWD
    are accounts-off in every state (tests/test_login.py), before the state
    check, while "Checks, in order" and the Handshake said not-ready; and
    the departures table left out that an IPv6 network of --ipv6-prefix
    bits is one address.  The check order has the step, the Handshake the
    exception, the table a row for each."""
    from twisted_chat.server.limits.addresses import address_key

    sections = _protocol_sections()
    checks = sections["## Checks, in order"]
    assert ("4a. under `--accounts off`, `PASS`, `REGISTER` and `PASSWD` → `accounts-off`, "
            "in every state (before the state check") in checks
    assert checks.index("4a.") < checks.index("5. state")
    assert ("any other known verb is `ERROR not-ready` (`PASS`, `REGISTER` and `PASSWD` under "
            "`--accounts off`: `ERROR accounts-off`") in sections["## Handshake"]
    departs = sections["## Where this server departs from chat/1 as published"]
    [off] = [row for row in departs.split(" | ") if "are `ERROR accounts-off this" in row]
    assert '"Checks, in order", 4a' in off
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:2") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    [network] = [row for row in departs.split(" | ")
                 if "an IPv6 network of `--ipv6-prefix` bits (a /64 by default)" in row]
    assert "(an IPv4-mapped IPv6 address counts as its IPv4 address)" in network
    assert "every IPv6 address in that network shares its 20 connections" in network


def test_the_handshake_says_a_line_said_before_ready_is_history() -> None:
    """rev22-docs F1: the Handshake said a lobby line handled after the
    newcomer's NICK is sent live; one said while its nick is looked up or
    its password asked or checked is in its history
    (tests/test_login.py's test_lobby_lines_said_before_ready_are_...)."""
    handshake = _protocol_sections()["## Handshake"]
    assert "handled before the newcomer's `NICK`" not in handshake
    assert ("A lobby message the server handled before it accepted the nick (before it wrote "
            "`READY`) is in the history and never also sent live; one handled after that is "
            "sent live only.") in handshake


def test_register_under_required_is_the_operators_answer_even_with_no_account() -> None:
    """rev20-docs F3: the PASSWD item said that once the operator removed an
    account, REGISTER makes a new one; under --accounts required REGISTER is
    always refused (tests/test_login.py), with a text chat/1 does not give
    for a nick with no account, so the departures table has it too."""
    from twisted_chat.server.accounts.login import OPERATORS_ACCOUNTS_TEXT

    sections = _protocol_sections()
    accounts = sections["## Accounts"]
    answer = f"`ERROR registered {OPERATORS_ACCOUNTS_TEXT}`"
    assert "(then `REGISTER` makes a new one" not in accounts
    assert ("(then, under `open`, `REGISTER` makes a new one: it asks the accounts, not what "
            "the connection proved; under `required` it is `ERROR registered` as "
            "always") in accounts
    assert f"is always {answer}, whether the nick has an account or not" in accounts
    departs = sections["## Where this server departs from chat/1 as published"]
    [row] = [row for row in departs.split(" | ")
             if "under `--accounts required`, every `REGISTER`" in row]
    assert f"{answer}, also for a nick with no account" in row


def test_history_md_gives_the_byte_cap_and_its_options_defaults() -> None:
    """rev20-docs F2: docs/history.md said a newcomer gets the last
    --history messages, leaving out --history-bytes (its table too).  The
    table's options exist, and each number it gives is the option's
    default, as C{twistd chat} has it."""
    from twisted_chat.server.service import Options

    defaults = Options()
    text = (ROOT / "docs" / "history.md").read_text()
    intro = " ".join(text.split("\n## ", 1)[0].split())
    assert ("the newest of the last `--history` lobby messages (default 100) that fit in "
            "`--history-bytes` (default 64 KiB") in intro
    assert defaults["history"] == 100 and defaults["history-bytes"] == 64 * 1024
    table = [line for line in text.splitlines() if line.startswith("| `--")]
    named = []
    for row in table:
        option, _, default = row.strip("| ").split(" | ")
        [name] = re.findall(r"^`--([a-z-]+)", option)
        assert name in defaults, name
        named.append(name)
        if re.fullmatch(r"[0-9,]+", default):
            assert int(default.replace(",", "")) == defaults[name], (name, default)
    assert {"history", "history-bytes", "retain-messages", "db-backlog"} <= set(named), named


def test_the_departures_table_names_the_cluster_answers_and_bye_flood_before_ready() -> None:
    """rev16-docs #2, #3: the table said it lists every departure, but left
    out cluster mode's three answers (described apart) and the C{BYE flood}
    a connection gets for holding more than 4 lines before READY, well
    within the flood rate.  Each has its row: the cluster's point to the
    section that describes them, the held input's gives the line sent."""
    from twisted_chat.server.limits.heldinput import HELD_BEFORE_READY_LINES, TOO_MUCH_BEFORE_READY

    departs = "Where this server departs from chat/1 as published"
    raw = (ROOT / "docs" / "protocol.md").read_text().split(f"## {departs}\n")[1]
    rows = [line for line in raw.split("\n## ")[0].splitlines() if line.startswith("| ")]
    beyond = '"Beyond chat/1: cluster mode"'
    for line in ("RETRY unavailable", "ERROR unavailable", "ERROR unconfirmed"):
        [row] = [row for row in rows if f"`{line} <text>`" in row]
        assert "in cluster mode" in row and beyond in row, row
    assert "The last two rows are cluster mode's three extra answers" in " ".join(raw.split())
    [held] = [row for row in rows if TOO_MUCH_BEFORE_READY in row]
    assert f"`BYE flood {TOO_MUCH_BEFORE_READY}`" in held
    assert f"more than {HELD_BEFORE_READY_LINES} lines of `--max-line`" in held
    assert 'docs/security.md, "Held input"' in held


def test_the_readmes_fast_test_recipe_runs_no_benchmark() -> None:
    """rev15-docs L2: "the fast part" (-m 'not e2e and not
    soak') still ran tests/test_bench_quick.py, the benchmark's quick mode
    (a real server pinned to a CPU, up to 50 s), and the README's list of
    what `make test` runs left it out.  The recipe leaves out every
    registered marker, and the list names each."""
    import tomllib

    from _pytest.mark.expression import Expression

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = [line.split(":")[0]
               for line in config["tool"]["pytest"]["ini_options"]["markers"]]
    assert {"e2e", "soak", "bench"} <= set(markers)
    assert "pytestmark = pytest.mark.bench" in (ROOT / "tests" / "test_bench_quick.py").read_text()
    readme = (ROOT / "README.md").read_text()
    [fast] = [line for line in readme.splitlines() if "# the fast part" in line]
    [expression] = re.findall(r"""-m '([^']+)'""", fast)
    recipe = Expression.compile(expression)
    for marker in markers:
        assert not recipe.evaluate(lambda name, marker=marker: name == marker), marker
    assert recipe.evaluate(lambda name: False)
    [everything] = [line for line in readme.splitlines() if line.startswith("make test  ")
                    and "# everything:" in line]
    assert "end-to-end, soak, bench (short runs)" in everything


def test_every_bench_test_that_runs_a_server_is_marked_bench() -> None:
    """The README's fast part leaves out the tests marked
    C{bench}; the floor's test (a server on a real socket) and
    bench.coldpath's short run (our server pinned to CPU 0, under load) were
    not marked, and ran in it."""
    runs = ("RunningServer(", ".main(", "'-m', 'bench'")
    found = []
    for path in sorted((ROOT / "tests").glob("test_bench_*.py")):
        tree = ast.parse(path.read_text())
        module_marked = any(
            isinstance(node, ast.Assign) and "pytestmark" in map(ast.unparse, node.targets)
            and "mark.bench" in ast.unparse(node.value) for node in tree.body)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(run in ast.unparse(node) for run in runs):
                found.append(node.name)
                marked = module_marked or any(
                    "mark.bench" in ast.unparse(mark) for mark in node.decorator_list)
                assert marked, f"{path.name}::{node.name} runs a server, unmarked"
    assert len(found) >= 3, found


_TEST_MARKS = ("mark.e2e", "mark.soak", "mark.bench")  # what the fast part leaves out


def _module_marks(tree: ast.Module, path: Path) -> str:
    """The source of a test module's C{pytestmark}, through one
    C{other_module.pytestmark} (tests/test_cluster_e2e_history.py's)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and "pytestmark" in map(ast.unparse, node.targets):
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr == "pytestmark":
                other = path.with_name(f"{ast.unparse(value.value)}.py")
                return _module_marks(ast.parse(other.read_text()), other)
            return ast.unparse(value)
    return ""


def _called(call: ast.Call) -> str:
    """The name a call ends in: C{ServerProcess} for C{copied.ServerProcess(...)}."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


# Fixtures that start the real twistd: tests/conftest.py's chat_server,
# tests/test_cluster_e2e.py's cluster, tests/web/conftest.py's web (a
# WebServer) and tests/client/conftest.py's bob_online (a chat_server).
_STARTING_FIXTURES = {"chat_server", "cluster", "web", "bob_online"}


def test_every_test_that_starts_the_real_server_is_out_of_the_fast_part() -> None:
    """rev22-docs F4: the README's fast part (C{-m 'not e2e ...'}) ran three
    tests that start the real C{twistd -n chat} (one stops it with SIGSTOP
    for 3 s): they used the C{chat_server} fixture, or started a copied
    tree's C{ServerProcess}, unmarked.  A test that starts one (through a
    fixture of L{_STARTING_FIXTURES}, not given a stand-in C{twistd=}; or a
    C{ServerProcess} or C{WebServer} of its own) is marked C{e2e} (or C{soak} or
    C{bench}, which the fast part leaves out too).  The README names the
    fast part's tests that start a private C{redis-server}."""
    found, with_redis = [], set()
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_marked = any(mark in _module_marks(tree, path) for mark in _TEST_MARKS)
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    and node.name.startswith("test_")):
                continue
            decorators = [ast.unparse(decorator) for decorator in node.decorator_list]
            parametrized = {name.strip() for mark in node.decorator_list
                            if isinstance(mark, ast.Call) and _called(mark) == "parametrize"
                            and isinstance(mark.args[0], ast.Constant)
                            for name in str(mark.args[0].value).split(",")}
            fixtures = {arg.arg for arg in node.args.args} - parametrized
            calls = [call for call in ast.walk(node) if isinstance(call, ast.Call)]
            called = {_called(call) for call in calls}
            stand_in = any(word.arg == "twistd" for call in calls for word in call.keywords)
            marked = module_marked or any(
                mark in decorator for mark in _TEST_MARKS for decorator in decorators)
            if (fixtures & _STARTING_FIXTURES and not stand_in) or (
                    called & {"ServerProcess", "WebServer"}):
                found.append(node.name)
                assert marked, f"{path.relative_to(ROOT)}::{node.name} starts twistd, unmarked"
            elif not marked and ("redis" in fixtures or "RedisServer" in called):
                with_redis.add(path.name)
    assert len(found) >= 320, len(found)
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme.split("It still starts a private `redis-server`")[1].split(")")[0]
    assert set(re.findall(r"test_[a-z_]+\.py", said)) == with_redis, with_redis


def _stated(value: str) -> float:
    """A default as docs/protocol.md's Limits table writes it: C{1 MiB},
    C{64 KiB}, C{60 s}, C{0.5 per s}, C{100,000}."""
    value = re.sub(r" (s|per s)$", "", value.strip()).replace(",", "")
    units = {"KiB": 1024, "MiB": 1024 * 1024}
    number, _, unit = value.partition(" ")
    return float(number) * units[unit] if unit else float(number)


def test_the_limits_table_gives_each_options_default() -> None:
    """rev16-docs #4: docs/protocol.md named --redis-queue and
    --stream-bytes as limits a client meets (ERROR unavailable) with no
    default, and its Limits table left both out.  Every row's default is
    the option's, as C{twistd chat} has it (a row of several options gives
    a default each, or one unit for all: C{120 / 60 s}); --max-handshaking's
    is a rule, checked above."""
    from twisted_chat.server.service import Options

    defaults = Options()
    limits = _protocol_sections()["## Limits"]
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0] == "| option | default | rule |"
    checked = []
    for row in table[1:]:
        options, default, _ = row.strip("| ").split(" | ", 2)
        names = re.findall(r"`--([a-z-]+)`", options)
        if "max-handshaking" in names:
            continue
        unit = re.search(r" (s|per s)$", default)
        values = [part + (unit.group(0) if unit and not part.endswith(unit.group(0)) else "")
                  for part in default.split(" / ")]
        assert len(values) == len(names), row
        for name, value in zip(names, values, strict=True):
            assert _stated(value) == float(defaults[name]), (name, value, defaults[name])
            checked.append(name)
    assert {"redis-queue", "stream-bytes", "sendq", "max-accounts"} <= set(checked), checked
    assert "`--redis-queue`" in limits and "`--stream-bytes`" in limits


def test_client_md_says_what_the_client_says_when_its_goodbye_is_cut_short() -> None:
    """rev16-docs #5: docs/client.md gave Ctrl-C's unanswered goodbye as
    C{Interrupted. No answer ...}, which the client says only when typed
    lines waited or in a script (before joining it is C{Interrupted before
    joining the chat. ...}; once joined with nothing waiting, only C{No
    answer ...}), and its exit-status table had no row for leaving the
    wait with a second Ctrl-C (status 1)."""
    from tests.client.helpers import session
    from twisted_chat.client.protocol import ChatClient

    def ended(*, joined: bool, second: bool) -> tuple[int, str]:
        s = session("alice" if joined else None)
        if joined:
            s.ready()
        else:
            s.receive("HELLO chat/1 x", "NICK")
        s.client.interrupt()
        if second:
            s.client.interrupt()
        else:
            s.clock.advance(ChatClient.QUIT_TIMEOUT)
        outcome = s.lose()
        assert outcome.message is not None
        return outcome.code, outcome.message.replace("chat.test:7000", "HOST:PORT")

    text = " ".join((ROOT / "docs" / "client.md").read_text().split())
    no_answer = ended(joined=True, second=False)
    left = ended(joined=True, second=True)
    before = ended(joined=False, second=False)
    assert no_answer[0] == left[0] == 1 and before[0] == ChatClient.INTERRUPTED == 130
    assert f"exit status 1: `{no_answer[1]}`" in text
    assert f"second Ctrl-C, which stops the wait: `{left[1]}`" in text
    assert "(not that the connection was lost), exit status 1." in text
    assert f"`{before[1]}`" in text
    [row] = re.findall(r"\| 1 \| [^\n]*", (ROOT / "docs" / "client.md").read_text())
    assert ("did not answer the goodbye within 5 seconds (or you left before it did, with a "
            "second Ctrl-C)") in row


def test_the_module_layout_names_every_member_of_session_connection() -> None:
    """docs/fanout.md, "Module layout", named 7 of the 17 members
    session.Connection requires (rev16-shape L2)."""
    from twisted_chat.server.session import Connection

    members = set(Connection.__annotations__) | {
        name for name in vars(Connection) if not name.startswith("_")}
    text = (ROOT / "docs" / "fanout.md").read_text()
    layout = text.split("## Module layout", 1)[1].split("\n## ", 1)[0]
    item = " ".join(next(part for part in layout.split("\n- ")
                         if part.startswith("`twisted_chat/server/session.py`")).split())
    assert len(members) >= 17
    assert sorted(name for name in members if f"`{name}`" not in item) == []


def _session(text: str, intro: str) -> list[str]:
    """The lines of the first code block after C{intro}."""
    after = text[text.index(intro):]
    block = after.split("```\n", 2)[1]
    return block.rstrip("\n").split("\n")


def test_the_readme_terminal_session_is_what_the_client_prints() -> None:
    """README's "A real terminal session" left out lines the client prints
    (Connecting, the recent-messages heading, the user table, the pairing
    line; rev19-user 4).  Its lines must be a run of docs/client.md's "A
    session", copied from a real terminal, without the nickname prompt that
    --nick skips."""
    readme = _session((ROOT / "README.md").read_text(), "A real terminal session")
    full = _session((ROOT / "docs" / "client.md").read_text(), "## A session")
    full = [line for line in full[1:] if not line.startswith("* Choose a nickname")]
    assert readme[0] == "$ python -m twisted_chat.client --nick alice localhost"
    shown = readme[1:-1]
    assert shown == full[: len(shown)]
    assert readme[-1].startswith("alice -> bob> ")
