"""
Accounts (docs/accounts.md): nicks protected by passwords.  The operator's
tool on them is C{python -m twisted_chat.accounts}; a cluster's accounts in
Redis are L{twisted_chat.server.cluster.accounts}.

  - L{store}: the accounts file (salted scrypt hashes), the credential
    check, no reactor in it;
  - L{login}: a connection's accounts side (C{PASS}, C{REGISTER},
    C{PASSWD});
  - L{loginlimits}: the failure limits of logins and the bounds of the
    password work;
  - L{passwordwork}: the password threads every hash runs on, bounded;
  - L{accountsetup}: the accounts as start-up makes them, and the log line
    that says which.
"""
