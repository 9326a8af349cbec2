"""Approval gates: the groups a user decides for are the ones ``[auth.users]`` gives."""

from __future__ import annotations


def test_the_groups_of_a_user_come_from_auth_users(make_config):
    auth = make_config(
        '[auth.users.olga]\ntoken = "t-olga"\nroles = ["approver"]\ngroups = ["ops", "db"]\n'
        '[auth.users.eve]\ntoken = "t-eve"\n'
    ).auth
    assert auth.groups_of("olga") == {"ops", "db"}
    assert auth.groups_of("eve") == frozenset()
    assert auth.groups_of("nobody") == frozenset()
