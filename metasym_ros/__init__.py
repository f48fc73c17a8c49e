"""MetaSym ROS 2 adapters: interfaces (`metasym_ros.msg`, `metasym_ros.srv`) and nodes."""

import os as _os
import pkgutil as _pkgutil

# Two directories hold parts of this package: the source tree (editable install) and the
# rosidl-generated msg/srv code in the install prefix's site-packages, whichever comes first
# on sys.path. extend_path merges every `metasym_ros/` on sys.path into one package.
__path__ = list(dict.fromkeys(_os.path.abspath(p) for p in _pkgutil.extend_path(__path__, __name__)))
