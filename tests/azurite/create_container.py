#!/usr/bin/env python3
"""Creates a blob container in Azurite (the Azure Storage emulator), signed with the emulator's
well-known account key (Shared Key authorization), using only the standard library.

    create_container.py --endpoint http://127.0.0.1:10000 --container NAME

object_store's Azure client reads and writes blobs but never creates containers; Azurite
refuses anonymous requests. Exit 0 when the container exists afterwards (created, or there
already), 1 with the server's answer otherwise.
"""

import argparse
import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
# Azurite's documented development account key (public, the same for every install).
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
VERSION = "2021-08-06"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--container", required=True)
    a = ap.parse_args()
    date = formatdate(usegmt=True)
    headers = {"x-ms-date": date, "x-ms-version": VERSION}
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    # Path-style URL (emulator): /account/container; the canonical resource repeats the account.
    resource = f"/{ACCOUNT}/{ACCOUNT}/{a.container}\nrestype:container"
    # VERB, then 11 standard headers (all empty but Content-Length, empty for 0 too).
    string_to_sign = "PUT\n" + "\n" * 11 + canonical_headers + resource
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), string_to_sign.encode(),
                                    hashlib.sha256).digest()).decode()
    req = urllib.request.Request(
        f"{a.endpoint.rstrip('/')}/{ACCOUNT}/{a.container}?restype=container",
        method="PUT",
        headers={**headers, "Authorization": f"SharedKey {ACCOUNT}:{sig}", "Content-Length": "0"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
        if status != 409:  # 409 ContainerAlreadyExists is fine
            sys.exit(f"create_container: http {status}: {e.read().decode(errors='replace')}")
    print(f"container {a.container}: http {status}")


if __name__ == "__main__":
    main()
