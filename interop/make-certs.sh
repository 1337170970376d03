#!/usr/bin/env bash
# interop/make-certs.sh DIR [CLIENT_CN]: a throwaway CA and certificates for the TLS interop
# runs, made with openssl, under the names RabbitMQ's tls-gen (and so py-amqp's suite) uses:
#   ca_certificate.pem                      the CA
#   server_certificate.pem, server_key.pem  for localhost and 127.0.0.1, signed by the CA
#   client_certificate.pem, client_key.pem  CN=CLIENT_CN (default warren-interop-client),
#                                           signed by the CA
#   client_certificate_broken.pem, client_key_broken.pem
#                                           a self-signed pair no broker here trusts
set -euo pipefail
dir=$1
client=${2:-warren-interop-client}
mkdir -p "$dir"
cd "$dir"
quiet() { "$@" 2>/dev/null; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Warren interop CA" \
    -keyout ca_key.pem -out ca_certificate.pem
quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server_key.pem -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n' >server.ext
quiet openssl x509 -req -in server.csr -CA ca_certificate.pem -CAkey ca_key.pem -CAcreateserial -days 2 \
    -extfile server.ext -out server_certificate.pem
quiet openssl req -newkey rsa:2048 -nodes -subj "/O=Warren interop/CN=$client" \
    -keyout client_key.pem -out client.csr
# Extensions make it an X.509 v3 certificate: rustls (webpki) refuses v1 ones.
printf 'extendedKeyUsage=clientAuth\n' >client.ext
quiet openssl x509 -req -in client.csr -CA ca_certificate.pem -CAkey ca_key.pem -CAcreateserial -days 2 \
    -extfile client.ext -out client_certificate.pem
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$client" \
    -addext extendedKeyUsage=clientAuth -keyout client_key_broken.pem -out client_certificate_broken.pem
rm -f server.csr server.ext client.csr client.ext ca_certificate.srl
