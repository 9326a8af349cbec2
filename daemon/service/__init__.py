"""cued under systemd: the notification protocol (notify), socket activation
(activation), the watchdog and the ``STATUS=`` line (watchdog), the unit file (unit) and
``cued service install`` (install). Each is a no-op without systemd."""
