"""qfserve: fine-tuned chat models served over Baidu Qianfan's v1 chat API."""

__version__ = "0.1.0"
