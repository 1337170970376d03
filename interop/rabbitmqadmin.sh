#!/usr/bin/env bash
# The management API with a real client: rabbitmqadmin v2 (the Rust crate, installed with cargo
# if missing) lists, declares, publishes, gets and deletes against a running Warren, and sets vhost and user limits.
#   interop/rabbitmqadmin.sh HTTP_PORT
# Prints "interop-rabbitmqadmin: N passed, N failed".
set -uo pipefail
port=$1
version=2.35.0
bin=${RABBITMQADMIN:-$(command -v rabbitmqadmin || true)}
if [[ -z $bin ]] || ! "$bin" --version 2>/dev/null | grep -q "$version"; then
    cargo install rabbitmqadmin --version "$version" --locked -q --root "${CARGO_HOME:-$HOME/.cargo}" >/dev/null 2>&1
    bin="${CARGO_HOME:-$HOME/.cargo}/bin/rabbitmqadmin"
fi
admin() { "$bin" --host 127.0.0.1 --port "$port" --username guest --password guest --non-interactive "$@"; }
q="ra-$$"
passed=0
failed=0
check() {
    local name=$1
    shift
    if "$@"; then echo "PASS rabbitmqadmin.$name"; passed=$((passed + 1)); else echo "FAIL rabbitmqadmin.$name"; failed=$((failed + 1)); fi
}
check declare admin declare queue --name "$q" --type classic
check list bash -c "$(declare -f admin); bin='$bin'; port=$port; admin list queues | grep -q '$q'"
check publish bash -c "$(declare -f admin); bin='$bin'; port=$port; admin publish message --routing-key '$q' --payload 'hello from rabbitmqadmin' | grep -q 'routed'"
check get bash -c "$(declare -f admin); bin='$bin'; port=$port; admin get messages --queue '$q' | grep -q 'hello from rabbitmqadmin'"
check delete admin delete queue --name "$q"
check gone bash -c "$(declare -f admin); bin='$bin'; port=$port; ! admin list queues | grep -q '$q'"
# Vhost limits: max-queues 1 in a vhost of its own lets one queue in and refuses the next.
vh="ra-vh-$$"
check vhost admin declare vhost --name "$vh"
check limit admin declare vhost_limit --vhost "$vh" --name max-queues --value 1
check limits-listed bash -c "$(declare -f admin); bin='$bin'; port=$port; admin list vhost_limits --vhost '$vh' | grep -q 'max-queues'"
check limit-allows admin declare queue --vhost "$vh" --name one --type classic
check limit-refuses bash -c "$(declare -f admin); bin='$bin'; port=$port; ! admin declare queue --vhost '$vh' --name two --type classic >/dev/null 2>&1"
check limit-deleted admin delete vhost_limit --vhost "$vh" --name max-queues
check limit-lifted admin declare queue --vhost "$vh" --name two --type classic
check vhost-deleted admin delete vhost --name "$vh"
# User limits on a user of its own.
u="ra-user-$$"
check user admin declare user --name "$u" --password pw --tags ""
check user-limit admin declare user_limit --username "$u" --name max-channels --value 8
check user-limits-listed bash -c "$(declare -f admin); bin='$bin'; port=$port; admin list user_limits --username '$u' | grep -q 'max-channels'"
check user-limit-deleted admin delete user_limit --username "$u" --name max-channels
check user-deleted admin delete user --name "$u"
echo "interop-rabbitmqadmin: $passed passed, $failed failed"
((failed == 0))
