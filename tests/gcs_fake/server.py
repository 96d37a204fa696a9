#!/usr/bin/env python3
"""A small in-memory fake of the Google Cloud Storage XML API, enough for object_store's
GCS client (0.12): object PUT/GET/HEAD/DELETE, ranged GET, create-only PUT
(x-goog-if-generation-match: 0), server-side copy (x-goog-copy-source), ListObjectsV2-style
listing (list-type=2, prefix, delimiter, continuation-token, max-keys, start-after) and XML
multipart uploads (POST ?uploads, PUT ?partNumber&uploadId, POST ?uploadId, DELETE ?uploadId).

No authentication: the client runs with a service-account JSON that sets `disable_oauth` and
`gcs_base_url`. Usage: server.py [--port N] [--host 127.0.0.1]; prints "listening on PORT" on
stdout once it accepts connections. Python standard library only.
"""

import argparse
import email.utils
import hashlib
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

LOCK = threading.Lock()
BUCKETS = {}  # bucket -> {name: (data, generation, mtime, etag)}
UPLOADS = {}  # upload id -> {"bucket", "name", "parts": {n: (data, etag)}}
GENERATION = [1000]


def next_generation():
    GENERATION[0] += 1
    return GENERATION[0]


def store(bucket, name, data):
    etag = '"%s"' % hashlib.md5(data).hexdigest()
    gen = next_generation()
    BUCKETS.setdefault(bucket, {})[name] = (data, gen, time.time(), etag)
    return gen, etag


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def parse(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segs = parts.path.lstrip("/").split("/", 1)
        bucket = unquote(segs[0])
        name = unquote(segs[1]) if len(segs) > 1 and segs[1] else None
        return bucket, name, query

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        hdrs = dict(headers or {})
        hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def error(self, status, code, message=""):
        head = self.command == "HEAD"
        xml = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>%s</Message></Error>" % (
            code,
            escape(message),
        )
        self.reply(status, xml.encode(), {"Content-Type": "application/xml"}, head)

    def object_headers(self, obj):
        data, gen, mtime, etag = obj
        return {
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(mtime, usegmt=True),
            "x-goog-generation": str(gen),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }

    # --- GET / HEAD ---------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        bucket, name, query = self.parse()
        with LOCK:
            objects = BUCKETS.setdefault(bucket, {})
            if name is None:
                return self.list(objects, query)
            obj = objects.get(name)
        if obj is None:
            return self.error(404, "NoSuchKey", name)
        data = obj[0]
        headers = self.object_headers(obj)
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            spec = rng[len("bytes="):]
            start_s, _, end_s = spec.partition("-")
            size = len(data)
            if start_s == "":
                start, end = max(size - int(end_s), 0), size - 1
            else:
                start = int(start_s)
                end = min(int(end_s), size - 1) if end_s else size - 1
            if start >= size or start > end:
                headers["Content-Range"] = "bytes */%d" % size
                return self.reply(416, b"", headers, head)
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
            return self.reply(206, data[start : end + 1], headers, head)
        self.reply(200, data, headers, head)

    def list(self, objects, query):
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter")
        start_after = query.get("start-after")
        token = query.get("continuation-token")
        max_keys = int(query.get("max-keys") or 1000)
        names = sorted(n for n in objects if n.startswith(prefix))
        after = token or start_after
        if after:
            names = [n for n in names if n > after]
        contents, prefixes = [], []
        truncated_at = None
        last = None
        for n in names:
            if len(contents) + len(prefixes) >= max_keys and last is not None:
                truncated_at = last
                break
            if delimiter:
                rest = n[len(prefix):]
                if delimiter in rest:
                    p = prefix + rest.split(delimiter, 1)[0] + delimiter
                    if p not in prefixes:
                        prefixes.append(p)
                    last = n
                    continue
            contents.append(n)
            last = n
        out = ["<?xml version='1.0' encoding='UTF-8'?>",
               "<ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'>"]
        out.append("<Prefix>%s</Prefix>" % escape(prefix))
        out.append("<KeyCount>%d</KeyCount>" % (len(contents) + len(prefixes)))
        out.append("<MaxKeys>%d</MaxKeys>" % max_keys)
        out.append("<IsTruncated>%s</IsTruncated>" % ("true" if truncated_at else "false"))
        if truncated_at:
            out.append("<NextContinuationToken>%s</NextContinuationToken>" % escape(truncated_at))
        for n in contents:
            data, gen, mtime, etag = objects[n]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mtime)) + ".%03dZ" % int((mtime % 1) * 1000)
            out.append(
                "<Contents><Key>%s</Key><Generation>%d</Generation><LastModified>%s</LastModified>"
                "<ETag>%s</ETag><Size>%d</Size></Contents>" % (escape(n), gen, stamp, escape(etag), len(data))
            )
        for p in prefixes:
            out.append("<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % escape(p))
        out.append("</ListBucketResult>")
        self.reply(200, "".join(out).encode(), {"Content-Type": "application/xml"})

    # --- PUT ----------------------------------------------------------------------------
    def do_PUT(self):
        bucket, name, query = self.parse()
        data = self.body()
        if name is None:
            with LOCK:
                BUCKETS.setdefault(bucket, {})
            return self.reply(200)
        if "uploadId" in query:
            with LOCK:
                up = UPLOADS.get(query["uploadId"])
                if up is None:
                    return self.error(404, "NoSuchUpload")
                etag = '"%s"' % hashlib.md5(data).hexdigest()
                up["parts"][int(query["partNumber"])] = (data, etag)
            return self.reply(200, b"", {"ETag": etag})
        match = self.headers.get("x-goog-if-generation-match")
        copy_source = self.headers.get("x-goog-copy-source")
        with LOCK:
            objects = BUCKETS.setdefault(bucket, {})
            if copy_source:
                src_bucket, _, src_name = unquote(copy_source).lstrip("/").partition("/")
                src = BUCKETS.get(src_bucket, {}).get(src_name)
                if src is None:
                    return self.error(404, "NoSuchKey", src_name)
                data = src[0]
            if match is not None:
                current = objects.get(name)
                current_gen = current[1] if current else 0
                if str(current_gen) != match:
                    return self.error(412, "PreconditionFailed", name)
            gen, etag = store(bucket, name, data)
        self.reply(200, b"", {"ETag": etag, "x-goog-generation": str(gen)})

    # --- POST (multipart) ---------------------------------------------------------------
    def do_POST(self):
        bucket, name, query = self.parse()
        data = self.body()
        if "uploads" in query:
            upload_id = uuid.uuid4().hex
            with LOCK:
                UPLOADS[upload_id] = {"bucket": bucket, "name": name, "parts": {}}
            xml = (
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                "<Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId>"
                "</InitiateMultipartUploadResult>" % (escape(bucket), escape(name), upload_id)
            )
            return self.reply(200, xml.encode(), {"Content-Type": "application/xml"})
        if "uploadId" in query:
            with LOCK:
                up = UPLOADS.pop(query["uploadId"], None)
                if up is None:
                    return self.error(404, "NoSuchUpload")
                root = ElementTree.fromstring(data)
                chunks = []
                for part in root.iter():
                    if part.tag.split("}")[-1] != "Part":
                        continue
                    fields = {c.tag.split("}")[-1]: (c.text or "") for c in part}
                    n = int(fields["PartNumber"])
                    stored = up["parts"].get(n)
                    if stored is None or stored[1].strip('"') != fields["ETag"].strip('"'):
                        UPLOADS[query["uploadId"]] = up
                        return self.error(400, "InvalidPart", str(n))
                    chunks.append(stored[0])
                gen, etag = store(up["bucket"], up["name"], b"".join(chunks))
            xml = (
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                "<Bucket>%s</Bucket><Key>%s</Key><ETag>%s</ETag>"
                "</CompleteMultipartUploadResult>" % (escape(bucket), escape(name), escape(etag))
            )
            return self.reply(200, xml.encode(), {"Content-Type": "application/xml", "x-goog-generation": str(gen)})
        self.error(400, "InvalidRequest", "unsupported POST")

    # --- DELETE -------------------------------------------------------------------------
    def do_DELETE(self):
        bucket, name, query = self.parse()
        self.body()
        with LOCK:
            if "uploadId" in query:
                UPLOADS.pop(query["uploadId"], None)
                return self.reply(204)
            objects = BUCKETS.setdefault(bucket, {})
            if name not in objects:
                return self.error(404, "NoSuchKey", name or "")
            del objects[name]
        self.reply(204)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print("listening on %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
