"""The demo web back end that sits behind HAProxy; its own image, without the discovery package."""
