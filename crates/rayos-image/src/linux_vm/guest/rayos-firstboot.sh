#!/bin/sh
# RayOS first-boot configuration of the Debian VM (installed by RayOS's
# image recipe; see docs/linux-vm.md in the RayOS sources).
#
# rayosd hands the VM's settings to the guest as systemd credentials on
# QEMU's fw_cfg (opt/io.systemd.credentials/rayos.*); systemd imports them
# at boot and rayos-firstboot.service passes them here through
# $CREDENTIALS_DIRECTORY, one value per file:
#   rayos.user                  login name (created, member of sudo)
#   rayos.password-hash         crypt(3) hash of its password ($6$..., $y$...)
#   rayos.ssh-authorized-key    one OpenSSH public key (enables sshd)
#   rayos.hostname, rayos.timezone, rayos.locale, rayos.keyboard
# A value that is missing keeps the image's default; a value that is not
# valid is reported and ignored. The script runs until it has finished once
# (/var/lib/rayos/firstboot.done): settings changed later are not applied.
set -u

C="${CREDENTIALS_DIRECTORY:-/run/credentials/@system}"
DONE=/var/lib/rayos/firstboot.done
applied=""

say() { echo "rayos-firstboot: $*"; }
# The value of credential rayos.$1 (first line), or nothing.
get() {
    if [ -r "$C/rayos.$1" ]; then
        head -n 1 "$C/rayos.$1" | tr -d '\r'
    fi
}
matches() { printf '%s\n' "$2" | grep -Eqx "$1"; }

hostname_cfg() {
    h=$(get hostname)
    [ -n "$h" ] || return 0
    if ! matches '[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?' "$h"; then
        say "hostname '$h' is not valid; keeping $(cat /etc/hostname)"
        return 0
    fi
    echo "$h" >/etc/hostname
    hostname "$h"
    sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t$h/" /etc/hosts
    applied="$applied hostname=$h"
}

timezone_cfg() {
    tz=$(get timezone)
    [ -n "$tz" ] || return 0
    case "$tz" in
        /* | *..*) tz="" ;;
    esac
    if [ -z "$tz" ] || [ ! -f "/usr/share/zoneinfo/$tz" ]; then
        say "timezone '$(get timezone)' is not known; keeping $(cat /etc/timezone 2>/dev/null || echo UTC)"
        return 0
    fi
    ln -sf "/usr/share/zoneinfo/$tz" /etc/localtime
    echo "$tz" >/etc/timezone
    applied="$applied timezone=$tz"
}

locale_cfg() {
    l=$(get locale)
    [ -n "$l" ] || return 0
    case "$l" in
        C | POSIX | C.UTF-8) ;;
        *)
            # /usr/share/i18n/SUPPORTED lists "en_US.UTF-8 UTF-8".
            line=$(grep -E "^$(printf '%s' "$l" | sed 's/[.[\*^$]/\\&/g') " /usr/share/i18n/SUPPORTED | head -n 1)
            if [ -z "$line" ]; then
                say "locale '$l' is not supported; keeping $(grep -s ^LANG= /etc/default/locale || echo C.UTF-8)"
                return 0
            fi
            # en_US.UTF-8 is compiled in the image; others are compiled
            # here, keeping those already there.
            if ! grep -qxF "$line" /etc/locale.gen; then
                echo "$line" >>/etc/locale.gen
                locale-gen --keep-existing >/dev/null
            fi
            ;;
    esac
    update-locale "LANG=$l"
    applied="$applied locale=$l"
}

keyboard_cfg() {
    k=$(get keyboard)
    [ -n "$k" ] || return 0
    if ! matches '[a-z0-9_]+(-[a-z0-9_]+)?' "$k"; then
        say "keyboard '$k' is not valid; keeping the image's layout"
        return 0
    fi
    # RayOS names a layout and variant as "fr-bepo".
    layout=${k%%-*}
    variant=""
    [ "$layout" = "$k" ] || variant=${k#*-}
    # The installer's "uk" is xkb's "gb" (xkb has no "uk": the guest would
    # fall back to US keys, and the agent bridge types UK ones).
    [ "$layout" = uk ] && layout=gb
    if grep -qx "XKBLAYOUT=\"$layout\"" /etc/default/keyboard &&
        grep -qx "XKBVARIANT=\"$variant\"" /etc/default/keyboard; then
        # The image's layout: the console already has it.
        applied="$applied keyboard=$k"
        return 0
    fi
    sed -i -e "s/^XKBLAYOUT=.*/XKBLAYOUT=\"$layout\"/" \
        -e "s/^XKBVARIANT=.*/XKBVARIANT=\"$variant\"/" /etc/default/keyboard
    # keyboard-setup.service loads the keymap cached by setupcon: make it
    # anew for the new layout, then apply it now (without waiting: it is
    # ordered around other boot units).
    setupcon --force --save-only >/dev/null 2>&1 || true
    systemctl --no-block restart keyboard-setup.service >/dev/null 2>&1 || true
    applied="$applied keyboard=$k"
}

user_cfg() {
    u=$(get user)
    hash=$(get password-hash)
    key=$(get ssh-authorized-key)
    if [ -z "$u" ]; then
        say "no user was configured: nobody can log in until one is added (rayos vm console, then useradd)"
        return 0
    fi
    if ! matches '[a-z_][a-z0-9_-]{0,31}' "$u" || [ "$u" = root ]; then
        say "user name '$u' is not valid; no user created"
        return 0
    fi
    if getent passwd "$u" >/dev/null; then
        say "user $u already exists; leaving it as it is"
        return 0
    fi
    useradd --create-home --shell /bin/bash --groups sudo,adm "$u"
    if [ -n "$hash" ]; then
        case "$hash" in
            \$[0-9a-z]*\$*) printf '%s:%s\n' "$u" "$hash" | chpasswd --encrypted ;;
            *) say "the password hash of $u is not a crypt(3) hash; its password stays locked" ;;
        esac
    fi
    if [ -n "$key" ]; then
        if matches '(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( .*)?' "$key"; then
            home=$(getent passwd "$u" | cut -d: -f6)
            install -d -m 700 -o "$u" -g "$u" "$home/.ssh"
            printf '%s\n' "$key" >"$home/.ssh/authorized_keys"
            chown "$u:$u" "$home/.ssh/authorized_keys"
            chmod 600 "$home/.ssh/authorized_keys"
            systemctl enable ssh.service >/dev/null 2>&1
            systemctl start --no-block ssh.service
            applied="$applied ssh-key"
        else
            say "the SSH key of $u is not an OpenSSH public key; not installed"
        fi
    fi
    if [ -z "$hash" ]; then
        # Key-only users have no password to give sudo.
        echo "$u ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/90-rayos-$u"
        chmod 440 "/etc/sudoers.d/90-rayos-$u"
    fi
    applied="$applied user=$u"
}

# Nothing can be set up on a read-only root (systemd-remount-fs failed or
# never ran, an fsck error): fail, so the unit runs again at the next boot
# instead of leaving a half-made user.
mkdir -p "$(dirname "$DONE")"
if ! touch "$DONE.tmp" 2>/dev/null; then
    say "the root filesystem is read-only: nothing configured; trying again at the next boot"
    # Why, on the console: / as mounted, and how systemd-remount-fs ended.
    say "/ is mounted $(findmnt -no OPTIONS / 2>&1)"
    systemctl --no-pager --lines=5 status systemd-remount-fs.service 2>&1 |
        while IFS= read -r l; do say "$l"; done
    exit 1
fi

# SSH host keys are not made here: the image ships without them (every VM
# would share them) and ssh.service makes them when it first starts
# (ssh.service.d/50-rayos-host-keys.conf), only in VMs that use SSH.

hostname_cfg
timezone_cfg
locale_cfg
keyboard_cfg
user_cfg

if ! { echo "${applied# }" >"$DONE.tmp" && sync "$DONE.tmp" && mv "$DONE.tmp" "$DONE"; }; then
    say "cannot record the first boot as done; it runs again at the next boot"
    exit 1
fi
say "done:${applied:- nothing configured}"
echo "RAYOS_GUEST_FIRSTBOOT_DONE"
