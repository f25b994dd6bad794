#!/usr/bin/env python
"""The HTTPS client of the fleet's kubelet and kubeadm stand-ins (package kubelet @KUBE_VERSION@).

The real kubelet and kubeadm talk to the API server through client-go with the credentials of
a kubeconfig: the cluster's CA, and a client certificate or a bearer token.  So do these
stand-ins, against the fake kube-apiserver that kubeadm's static Pod manifest starts.  The
kubeconfig is read in the shape kubeadm writes it (clientcmd's YAML, base64 `*-data` fields).

As a command (for the kubeadm stand-in, a shell script):
    kubeclient.py [--kubeconfig F | --server URL [--token T] [--insecure]] METHOD PATH [BODY]
prints the reply's JSON and exits 0 on a 2xx answer; otherwise it prints client-go's error
text ("Get \"URL\": dial tcp ...: connect: connection refused", or the Status message) on
stderr and exits 1.
"""
import argparse
import base64
import http.client
import json
import os
import re
import ssl
import sys
import tempfile
import urllib.parse

USER_AGENT = "fake-kubernetes/v@KUBE_VERSION@"
FIELDS = ("server", "certificate-authority-data", "client-certificate-data", "client-key-data", "token")


class ApiError(Exception):
    """A request that got no 2xx answer: code 0 when the server was not reached."""

    def __init__(self, code, message, body=None):
        super().__init__(message)
        self.code, self.body = code, body or {}


def read_kubeconfig(path):
    """The first cluster's and user's fields of a kubeconfig as kubeadm writes it."""
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^\s*(?:- )?([a-z-]+):\s*(.*?)\s*$", line)
            if match and match.group(1) in FIELDS and match.group(1) not in found:
                found[match.group(1)] = match.group(2).strip('"')
    return found


class Client:
    def __init__(self, kubeconfig=None, server=None, token=None, insecure=False, timeout=10):
        fields = read_kubeconfig(kubeconfig) if kubeconfig else {}
        self.server = (server or fields.get("server", "")).rstrip("/")
        self.token = token or fields.get("token")
        self.timeout = timeout
        self.context = ssl.create_default_context()
        self.context.check_hostname = False  # the serving certificate names IPs: verified below by the CA
        if insecure:
            self.context.verify_mode = ssl.CERT_NONE
        elif fields.get("certificate-authority-data"):
            self.context.load_verify_locations(
                cadata=base64.b64decode(fields["certificate-authority-data"]).decode())
        if fields.get("client-certificate-data"):
            # ssl loads a certificate chain from files only: a private file, gone once loaded.
            with tempfile.NamedTemporaryFile("wb", suffix=".pem") as pem:
                os.chmod(pem.name, 0o600)
                pem.write(base64.b64decode(fields["client-certificate-data"]) + b"\n"
                          + base64.b64decode(fields["client-key-data"]))
                pem.flush()
                self.context.load_cert_chain(pem.name)

    def request(self, method, path, body=None, content_type="application/json"):
        url = urllib.parse.urlsplit(self.server + path)
        connection = http.client.HTTPSConnection(url.hostname, url.port or 443, context=self.context,
                                                 timeout=self.timeout)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            connection.request(method, path, body=data, headers=headers)
            reply = connection.getresponse()
            raw = reply.read()
        except OSError as error:
            reason = os.strerror(error.errno).lower() if getattr(error, "errno", None) else str(error)
            raise ApiError(0, f'{method.capitalize()} "{self.server}{path}": dial tcp {url.netloc}: '
                              f'connect: {reason}') from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            answer = {"message": raw.decode(errors="replace")}
        if not 200 <= reply.status < 300:
            raise ApiError(reply.status, answer.get("message", f"the server answered {reply.status}"), answer)
        return answer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig")
    parser.add_argument("--server")
    parser.add_argument("--token")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("method")
    parser.add_argument("path")
    parser.add_argument("body", nargs="?")
    parser.add_argument("--content-type", default="application/json")
    args = parser.parse_args()
    try:
        client = Client(args.kubeconfig, args.server, args.token, args.insecure)
        answer = client.request(args.method, args.path, json.loads(args.body) if args.body else None,
                                args.content_type)
    except ApiError as error:
        sys.stderr.write(f"{error}\n")
        sys.exit(1)
    except OSError as error:
        sys.stderr.write(f"{error}\n")
        sys.exit(1)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
