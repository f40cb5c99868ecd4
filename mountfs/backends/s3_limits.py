"""S3's limits, and the part size mountfs uploads in by default: plain numbers, which the S3
driver's declaration (its --s3-part-size default) needs without the S3 client's code."""

MIN_PART = 8 * 1024 * 1024
MIN_STREAM_PART = 5 * 1024 * 1024  # the smallest part but the last S3 takes
MAX_PARTS = 10_000

MAX_COPY = 5 * 1024**3  # the largest object CopyObject takes
MAX_OBJECT = 5 * 1024**4  # the largest object S3 stores
MAX_KEY = 1024  # bytes of UTF-8
