#!/bin/sh
# The compose stack's HDFS daemons: `hdfs.sh namenode` (formats an empty name directory first) or `hdfs.sh datanode`
# (its hostname, the address the NameNode hands out in WebHDFS redirects, is the container's: DATANODE_HOSTNAME).
# exec: the JVM is PID 1's child under `init: true` and gets SIGTERM directly.
set -eu
# The same --add-opens flags as the local stack's (include/scripts/stack.py JAVA_OPENS; a unit test compares them):
# Hadoop 3.4 on Java 17.
JAVA_OPENS="--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/sun.security.action=ALL-UNNAMED"
java_run() {
  # shellcheck disable=SC2086
  exec java "-Xmx${HDFS_HEAP:-512m}" $JAVA_OPENS -Dhadoop.log.dir=/tmp -Dhadoop.home.dir=/opt/hadoop \
    "-Dlog4j.configuration=file:$HADOOP_CONF_DIR/log4j.properties" -cp "$HADOOP_CONF_DIR:/opt/hadoop/lib/*" "$@"
}
case "${1:-}" in
  namenode)
    if [ ! -f /hadoop/name/current/VERSION ]; then
      java -Xmx256m $JAVA_OPENS "-Dlog4j.configuration=file:$HADOOP_CONF_DIR/log4j.properties" \
        -cp "$HADOOP_CONF_DIR:/opt/hadoop/lib/*" org.apache.hadoop.hdfs.server.namenode.NameNode \
        -format -nonInteractive -force
    fi
    java_run org.apache.hadoop.hdfs.server.namenode.NameNode ;;
  datanode)
    java_run org.apache.hadoop.hdfs.server.datanode.DataNode -D "dfs.datanode.hostname=${DATANODE_HOSTNAME:?set DATANODE_HOSTNAME}" ;;
  *)
    echo "usage: hdfs.sh namenode|datanode" >&2; exit 2 ;;
esac
