"""
Accounts (docs/accounts.md): nicks protected by passwords.  The operator's
tool on them is C{python -m twisted_chat.accounts}; a cluster's accounts in
Redis are L{twisted_chat.server.cluster.accounts}.

  - L{records}: what both stores share: the L{records.Account} record, the
    errors, and L{records.AccountBook}, the server's view of a store;
  - L{store}: the accounts file (SQLite), no reactor in it;
  - L{hashing}: the salted scrypt hashes, and the dummy hash a nick with
    no account is checked against;
  - L{fileaccess}: why this process may not use the accounts file, by the
    owners and modes of the file and its folder;
  - L{cred}: the C{twisted.cred} checker, realm and portal;
  - L{login}: a connection's accounts side (C{PASS}, C{REGISTER},
    C{PASSWD});
  - L{loginlimits}: the failure limits of logins and the bounds of the
    password work;
  - L{passwordwork}: the password threads every hash runs on, bounded;
  - L{accountsetup}: the accounts as start-up makes them, and the log line
    that says which.
"""
