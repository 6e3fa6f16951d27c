// The article's example: express answers "Hello world" on port 3000.
const express = require('express');

const app = express();
const port = Number(process.env.PORT) || 3000;

app.get('/', (req, res) => {
  res.send('Hello world\n');
});

const server = app.listen(port, () => {
  console.log(`hello: listening on port ${port}`);
});

// node is PID 1 in its microcontainer: stop promptly on `docker stop`.
process.on('SIGTERM', () => server.close(() => process.exit(0)));
