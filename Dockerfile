# The service runs its TypeScript directly on Node 24 (type stripping): no build step.
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY src ./src
COPY agents ./agents
COPY fhir ./fhir
COPY prompts ./prompts
COPY config ./config
RUN mkdir -p /data && chown node:node /data
USER node
EXPOSE 3000
CMD ["node", "src/main.ts"]
